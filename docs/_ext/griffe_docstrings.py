"""A griffe extension that turns the library's reST-flavoured docstrings into Markdown.

The docstrings are Google style, written to read well in ``help()`` and to run as doctests,
with three reST habits that Markdown does not know:

* cross-references such as ``:func:`scan``` or ``:class:`recurrent.LSTMParams```: each
  becomes an autorefs link to the object it names, resolved the way Python would resolve
  the name where the docstring is written, so a reference to an object that does not
  exist (or is not documented) fails ``mkdocs build --strict``;
* doctests (``>>>`` lines and their output, up to a blank line), which would otherwise be
  read as Markdown paragraphs (and their ``[...]`` outputs as links): each becomes a
  ``pycon`` code block;
* a paragraph ending in ``::`` before an indented literal block: the ``::`` becomes ``:``
  (the indented block is already a Markdown code block);
* an ``Args`` entry naming several arguments whose list of names wraps before the colon
  (``a, b,`` then ``c: ...``): the names are joined on one line, where griffe reads them.

Loaded by ``mkdocs.yml`` (``extensions:`` of the python handler); not part of the package.
"""

import re

import griffe

_ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|obj|exc):`~?([\w.]+)`")
_NAME_LIST = re.compile(r"^\s+\w+(?:, \w+)*,$")  # "  a, b,"
_MORE_NAMES = re.compile(r"^\s+\w+(?:, \w+)*[,:]")  # "    c," or "    c: ..."
_CALLABLE_ROLES = ("func", "class", "meth", "attr", "data", "obj", "exc")


def _find(obj, identifier: str):
  """The object ``identifier`` names where ``obj`` is written (an alias or not), or None."""
  head, *rest = identifier.split(".")
  try:
    try:
      target = obj.modules_collection[obj.resolve(head)]
    except griffe.NameResolutionError:  # a full path, e.g. recurrent.scan, not imported
      target = obj.modules_collection[head]
    for name in rest:
      target = target.final_target.members[name] if target.is_alias else target.members[name]
    return target.final_target if target.is_alias else target
  except (KeyError, ValueError, griffe.NameResolutionError, griffe.AliasResolutionError):
    return None


def _lookup(obj, identifier: str, role: str):
  """The canonical path of the documented object ``identifier`` names, or None."""
  target = _find(obj, identifier)
  if target is None:
    return None
  # `recurrent.scan` names both the module and the function it defines (the package's
  # attribute is the function at run time, the module statically): a :func: means the
  # function.
  last = identifier.rsplit(".", 1)[-1]
  if role in _CALLABLE_ROLES and target.is_module and "." in identifier and last in target.members:
    target = target.members[last]
    target = target.final_target if target.is_alias else target
  if target.is_attribute and target.docstring is None:
    # `from_core = _linen.from_core`: the object it names, if that is documented; an
    # undocumented constant has no entry to link to (None: shown as code).
    return _lookup(target.parent, str(target.value), role) if target.value else None
  return target.path


def _links(obj, text: str) -> str:
  def link(match: re.Match) -> str:
    role = match.group(0)[1 : match.group(0).index(":", 1)]
    identifier = match.group(1)
    path = _lookup(obj, identifier, role)
    if path is None and _find(obj, identifier) is not None:
      return f"`{identifier}`"
    # An unknown name stays as written, so autorefs reports it and --strict fails.
    return f"[`{identifier}`][{path or identifier}]"

  return _ROLE.sub(link, text)


def _markdown_blocks(text: str) -> str:
  lines, out, i = text.split("\n"), [], 0
  while i < len(lines):
    stripped = lines[i].lstrip()
    if _NAME_LIST.match(lines[i]) and i + 1 < len(lines) and _MORE_NAMES.match(lines[i + 1]):
      # "a, b,\n  c: ..." in Args: one entry naming several arguments, wrapped before its
      # colon; griffe reads an entry's name from its first line only.
      lines[i + 1] = f"{lines[i]} {lines[i + 1].lstrip()}"
      i += 1
      continue
    if not stripped.startswith(">>>"):
      out.append(re.sub(r"(\S)::$", r"\1:", lines[i]))
      i += 1
      continue
    indent = lines[i][: len(lines[i]) - len(stripped)]
    out.append(f"{indent}```pycon")
    while i < len(lines) and lines[i].strip():
      out.append(lines[i])
      i += 1
    out.append(f"{indent}```")
  return "\n".join(out)


class DocstringsToMarkdown(griffe.Extension):
  """Rewrites every docstring of a loaded package (see the module docstring)."""

  def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
    seen = set()

    def visit(obj) -> None:
      if obj.is_alias or obj.path in seen:
        return
      seen.add(obj.path)
      if obj.docstring is not None:
        obj.docstring.value = _markdown_blocks(_links(obj, obj.docstring.value))
      for member in obj.members.values():
        visit(member)

    visit(pkg)
