// The one registration point: every kdfast op's schema lives here; kernels register per dispatch key
// in csrc/<op>/{cpu,cuda}/ and fake (meta) implementations in kdfast/ops/.
#include <torch/extension.h>
#include <torch/library.h>

TORCH_LIBRARY(kdfast, m) {
  // Per-unit k-th largest of acts ((M, U) or (N, U, H, W) float32): a (U,) tensor.
  m.def("topk_threshold(Tensor acts, int k) -> Tensor");
  // Per-unit k largest values, sorted descending: a (U, k) tensor.
  m.def("unit_topk(Tensor acts, int k) -> Tensor");
  // Dissection tally of one batch: (label pixel counts (L,), intersections (U, L), activations (U, C)).
  m.def(
      "iou_tally(Tensor acts, Tensor thresholds, Tensor seg, Tensor image_labels, Tensor label_category, "
      "int num_categories, bool category_gated) -> (Tensor, Tensor, Tensor)");
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
}
