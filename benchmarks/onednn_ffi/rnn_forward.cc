// oneDNN's fused LSTM and GRU forward (inference) as an XLA FFI custom call, for
// benchmarks/onednn_rnn.py: what a CPU custom call into oneDNN's RNN primitives (the
// kernel behind PyTorch's nn.LSTM on the CPU) would give a JAX program.
//
// Inputs, float32: x [N, T, C] (batch-major), w_ih [C, G*H], w_hh [H, G*H] and the bias,
// in oneDNN's gate order and its ldigo and ldgo layouts with one layer and one direction:
// the LSTM (G = 4) i, f, g, o with b [4H] (recurrent's LSTMParams as they are); the
// reset-after GRU (G = 3, oneDNN's lbr_gru) z, r, n with b [4H] = (b_z, b_r, b_in, b_hn),
// the r and z biases summed over input and recurrent. Output: y [N, T, H]. Zero initial
// carry. Attribute any_weights: 1 lets oneDNN pick its weights layout (reordered at every
// call), 0 makes it read ldigo as given. One call at a time per shape: the cached
// primitive's scratchpad and weights buffers are shared.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace {

namespace ffi = xla::ffi;
using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

// One primitive per problem, created on first use (oneDNN compiles its kernels then).
struct Rnn {
  dnnl::primitive prim;
  dnnl::memory::desc src, dst, bias, w_ih_given, w_hh_given;
  dnnl::memory w_ih, w_hh;  // in pd's layout, where it differs from the given one
  dnnl::memory scratchpad;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Fills `rnn` from the primitive descriptor `pd` (lstm_forward's or lbr_gru_forward's).
template <typename Pd, typename Prim>
void Finish(const Pd& pd, Rnn* rnn) {
  rnn->prim = Prim(pd);
  rnn->src = pd.src_layer_desc();
  rnn->dst = pd.dst_layer_desc();
  rnn->bias = pd.bias_desc();
  if (pd.weights_layer_desc() != rnn->w_ih_given)
    rnn->w_ih = dnnl::memory(pd.weights_layer_desc(), Engine());
  if (pd.weights_iter_desc() != rnn->w_hh_given)
    rnn->w_hh = dnnl::memory(pd.weights_iter_desc(), Engine());
  rnn->scratchpad = dnnl::memory(pd.scratchpad_desc(), Engine());
}

Rnn* Get(int64_t n, int64_t t, int64_t c, int64_t h, int64_t gates, bool any_weights) {
  static std::mutex mu;
  static std::map<std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, bool>,
                  std::unique_ptr<Rnn>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& entry = cache[std::make_tuple(n, t, c, h, gates, any_weights)];
  if (entry) return entry.get();
  auto rnn = std::make_unique<Rnn>();
  const tag w_tag = any_weights ? tag::any : tag::ldigo;
  dnnl::memory::desc src({t, n, c}, dt::f32, tag::ntc);
  dnnl::memory::desc dst({t, n, h}, dt::f32, tag::ntc);
  dnnl::memory::desc bias({1, 1, 4, h}, dt::f32, tag::ldgo);  // 4 for the LSTM and lbr_gru
  dnnl::memory::desc w_ih({1, 1, c, gates, h}, dt::f32, w_tag);
  dnnl::memory::desc w_hh({1, 1, h, gates, h}, dt::f32, w_tag);
  rnn->w_ih_given = dnnl::memory::desc({1, 1, c, gates, h}, dt::f32, tag::ldigo);
  rnn->w_hh_given = dnnl::memory::desc({1, 1, h, gates, h}, dt::f32, tag::ldigo);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto kind = dnnl::prop_kind::forward_inference;
  const auto dir = dnnl::rnn_direction::unidirectional_left2right;
  const dnnl::memory::desc none;
  if (gates == 4) {
    Finish<dnnl::lstm_forward::primitive_desc, dnnl::lstm_forward>(
        dnnl::lstm_forward::primitive_desc(Engine(), kind, dir, src, none, none, w_ih, w_hh,
                                           bias, dst, none, none, attr),
        rnn.get());
  } else {
    Finish<dnnl::lbr_gru_forward::primitive_desc, dnnl::lbr_gru_forward>(
        dnnl::lbr_gru_forward::primitive_desc(Engine(), kind, dir, src, none, w_ih, w_hh,
                                              bias, dst, none, attr),
        rnn.get());
  }
  entry = std::move(rnn);
  return entry.get();
}

// The weights as the primitive reads them: `given` itself, or reordered into `own`.
dnnl::memory Weights(dnnl::stream& stream, dnnl::memory given, dnnl::memory& own) {
  if (!own) return given;
  dnnl::reorder(given, own).execute(stream, given, own);
  return own;
}

ffi::Error RnnForwardImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w_ih,
                           ffi::Buffer<ffi::F32> w_hh, ffi::Buffer<ffi::F32> b,
                           ffi::ResultBuffer<ffi::F32> y, int64_t any_weights) {
  const auto dims = x.dimensions();
  const auto w_dims = w_hh.dimensions();
  if (dims.size() != 3 || w_dims.size() != 2 || (w_dims[1] != 4 * w_dims[0] &&
                                                  w_dims[1] != 3 * w_dims[0])) {
    return ffi::Error::InvalidArgument("expected x [N, T, C] and w_hh [H, 4H] or [H, 3H]");
  }
  Rnn* rnn = Get(dims[0], dims[1], dims[2], w_dims[0], w_dims[1] / w_dims[0], any_weights != 0);
  dnnl::engine& engine = Engine();
  dnnl::stream stream(engine);
  dnnl::memory w_ih_given(rnn->w_ih_given, engine, w_ih.typed_data());
  dnnl::memory w_hh_given(rnn->w_hh_given, engine, w_hh.typed_data());
  rnn->prim.execute(
      stream,
      {{DNNL_ARG_SRC_LAYER, dnnl::memory(rnn->src, engine, x.typed_data())},
       {DNNL_ARG_WEIGHTS_LAYER, Weights(stream, w_ih_given, rnn->w_ih)},
       {DNNL_ARG_WEIGHTS_ITER, Weights(stream, w_hh_given, rnn->w_hh)},
       {DNNL_ARG_BIAS, dnnl::memory(rnn->bias, engine, b.typed_data())},
       {DNNL_ARG_DST_LAYER, dnnl::memory(rnn->dst, engine, y->typed_data())},
       {DNNL_ARG_SCRATCHPAD, rnn->scratchpad}});
  stream.wait();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnForward, RnnForwardImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("any_weights"));
