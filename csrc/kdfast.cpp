// The one registration point: every kdfast op's schema lives here; kernels register per dispatch key
// in csrc/<op>/{cpu,cuda}/ and fake (meta) implementations in kdfast/ops/.
#include <torch/extension.h>
#include <torch/library.h>

#include "emulation.h"

TORCH_LIBRARY(kdfast, m) {
  // Per-unit k-th largest of acts ((M, U) or (N, U, H, W) float32): a (U,) tensor.
  m.def("topk_threshold(Tensor acts, int k) -> Tensor");
  // Per-unit k largest values, sorted descending: a (U, k) tensor.
  m.def("unit_topk(Tensor acts, int k) -> Tensor");
  // Dissection tally of one batch: (label pixel counts (L,), intersections (U, L), activations (U, C)).
  // labels_validated: the caller vouches for the label ranges (checked once at packing), so no host read.
  m.def(
      "iou_tally(Tensor acts, Tensor thresholds, Tensor seg, Tensor image_labels, Tensor label_category, "
      "int num_categories, bool category_gated, bool labels_validated=False) -> (Tensor, Tensor, Tensor)");
  // Fused e2KD loss over (B, K) logits and (B, N) flattened explanation maps: (T²·mean KL(p_t(T) ‖ p_s(T)),
  // lam·mean(1 − cos(student map, teacher map)), d kd/d student_logits (B, K), d explanation/d student_maps
  // (B, N)); the gradients are computed in the forward only with compute_grad (else 0-element tensors), and
  // the registered backward scales them (teacher inputs are constants).
  m.def(
      "kd_explain_loss(Tensor student_logits, Tensor teacher_logits, Tensor student_maps, Tensor teacher_maps, "
      "float T, float lam, float eps=1e-8, bool compute_grad=False) -> (Tensor, Tensor, Tensor, Tensor)");
  // B-cos convolution forward with unit-norm weight (O·max_out, C/groups, kH, kW): (out (N, O, Ho, Wo),
  // linear = ŵᵀx (N, O·max_out, Ho, Wo), patch norms (N, groups, Ho, Wo)); the last two are saved for the
  // backward. `explain` (explanation mode: dynamic scale treated as a constant) changes only the backward.
  m.def(
      "bcos_conv2d(Tensor input, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, int groups, "
      "int max_out, float b, bool explain) -> (Tensor, Tensor, Tensor)");
}

namespace {
bool built_with_cuda() {
#ifdef KDFAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "kdfast compiled kernels (ops are registered under torch.ops.kdfast)";
  m.def("built_with_cuda", &built_with_cuda, "whether the CUDA kernels were compiled into this build");
  m.def("openmp_threads", []() { return at::get_num_threads(); }, "intra-op threads the CPU kernels use");
  m.def("_emulate_iou_tally_cuda", &kdfast::emulate_iou_tally_cuda,
        "tests: the CUDA tally kernel's grid emulated on the host (blocks and threads in seeded shuffled order)");
  m.def("_emulate_topk_cuda", &kdfast::emulate_topk_cuda,
        "tests: the CUDA top-k algorithm with its kernels' grids emulated on the host");
}
