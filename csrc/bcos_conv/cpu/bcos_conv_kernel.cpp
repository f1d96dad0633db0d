// B-cos convolution forward on the CPU. The linear part ŵᵀx is at::conv2d (oneDNN); everything else is one
// pass per output row: the patch norm (box sum of the channel-summed x² over the kernel window, as a conv
// of x² with a ones kernel would give), max-out over the `max_out` linear units, and the B-cos scaling.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

namespace kdfast {
namespace {

// The same stabiliser as the bcos package: norm = sqrt(Σ_patch x² + 1e-6).
constexpr double kNormEps = 1e-6;
// |cos| offset of the bcos package's B != 2 branch: (|out / norm| + 1e-6)^(B-1).
constexpr double kCosEps = 1e-6;

template <typename acc_t>
inline acc_t bcos_scaled(acc_t out, acc_t norm, acc_t b, bool b_is_two) {
  if (b_is_two) return std::abs(out) / norm * out;
  return std::pow(std::abs(out / norm) + acc_t(kCosEps), b - acc_t(1)) * out;
}

void check_args(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride, at::IntArrayRef padding,
                at::IntArrayRef dilation, int64_t groups, int64_t max_out, double b) {
  TORCH_CHECK(input.dim() == 4, "kdfast.bcos_conv2d: input must be (N, C, H, W), got ", input.dim(), "-D");
  TORCH_CHECK(weight.dim() == 4, "kdfast.bcos_conv2d: weight must be (O*max_out, C/groups, kH, kW), got ",
              weight.dim(), "-D");
  TORCH_CHECK(input.scalar_type() == weight.scalar_type(), "kdfast.bcos_conv2d: input is ", input.scalar_type(),
              " but weight is ", weight.scalar_type());
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "kdfast.bcos_conv2d: stride, padding and dilation must have two entries each");
  TORCH_CHECK(groups >= 1 && input.size(1) % groups == 0 && weight.size(1) * groups == input.size(1),
              "kdfast.bcos_conv2d: input has ", input.size(1), " channels, weight expects ", weight.size(1),
              " per group with groups=", groups);
  TORCH_CHECK(max_out >= 1 && weight.size(0) % max_out == 0, "kdfast.bcos_conv2d: weight has ", weight.size(0),
              " filters, not a multiple of max_out=", max_out);
  TORCH_CHECK((weight.size(0) / max_out) % groups == 0, "kdfast.bcos_conv2d: ", weight.size(0) / max_out,
              " output channels are not divisible by groups=", groups);
  TORCH_CHECK(b >= 1.0, "kdfast.bcos_conv2d: b must be >= 1, got ", b);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bcos_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                               at::IntArrayRef stride, at::IntArrayRef padding,
                                                               at::IntArrayRef dilation, int64_t groups,
                                                               int64_t max_out, double b, bool explain) {
  (void)explain;  // the forward values are the same; explanation mode only changes the backward
  check_args(input, weight, stride, padding, dilation, groups, max_out, b);
  const at::Tensor x = input.contiguous();
  const at::Tensor linear = at::conv2d(x, weight, {}, stride, padding, dilation, groups).contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Ho = linear.size(2), Wo = linear.size(3);
  const int64_t G = groups, M = max_out, O = weight.size(0) / max_out;
  const int64_t Cg = C / G, Og = O / G, KH = weight.size(2), KW = weight.size(3);
  const int64_t sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1], dh = dilation[0], dw = dilation[1];
  at::Tensor out = at::empty({N, O, Ho, Wo}, linear.options());
  at::Tensor norm = at::empty({N, G, Ho, Wo}, linear.options());
  if (out.numel() == 0) return std::make_tuple(out, linear, norm);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "bcos_conv2d_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* lp = linear.const_data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* np = norm.data_ptr<scalar_t>();
    const acc_t bb = static_cast<acc_t>(b);
    const bool b_is_two = b == 2.0;

    // Channel-summed squares of each group's input, (N, G, H, W): the box sum below then costs kH·kW per
    // output position instead of C/G·kH·kW.
    std::vector<acc_t> sq(static_cast<size_t>(N * G * H * W), acc_t(0));
    at::parallel_for(0, N * G, 1, [&](int64_t begin, int64_t end) {
      for (int64_t ng = begin; ng < end; ++ng) {
        acc_t* dst = sq.data() + ng * H * W;
        for (int64_t c = 0; c < Cg; ++c) {
          const scalar_t* src = xp + (ng * Cg + c) * H * W;
          for (int64_t i = 0; i < H * W; ++i) {
            const acc_t v = static_cast<acc_t>(src[i]);
            dst[i] += v * v;
          }
        }
      }
    });

    at::parallel_for(0, N * Ho, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> row(Wo);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t n = r / Ho, ho = r % Ho;
        for (int64_t g = 0; g < G; ++g) {
          const acc_t* plane = sq.data() + (n * G + g) * H * W;
          for (int64_t wo = 0; wo < Wo; ++wo) {
            acc_t s = 0;
            for (int64_t kh = 0; kh < KH; ++kh) {
              const int64_t ih = ho * sh - ph + kh * dh;
              if (ih < 0 || ih >= H) continue;
              for (int64_t kw = 0; kw < KW; ++kw) {
                const int64_t iw = wo * sw - pw + kw * dw;
                if (iw >= 0 && iw < W) s += plane[ih * W + iw];
              }
            }
            row[wo] = std::sqrt(s + acc_t(kNormEps));
            np[((n * G + g) * Ho + ho) * Wo + wo] = static_cast<scalar_t>(row[wo]);
          }
          for (int64_t o = g * Og; o < (g + 1) * Og; ++o) {
            const scalar_t* lin = lp + ((n * O + o) * M * Ho + ho) * Wo;
            scalar_t* dst = op + ((n * O + o) * Ho + ho) * Wo;
            for (int64_t wo = 0; wo < Wo; ++wo) {
              acc_t best = static_cast<acc_t>(lin[wo]);
              for (int64_t m = 1; m < M; ++m) {
                const acc_t v = static_cast<acc_t>(lin[m * Ho * Wo + wo]);
                if (v > best || std::isnan(v)) best = v;  // NaN propagates, as torch.max does
              }
              dst[wo] = static_cast<scalar_t>(bcos_scaled(best, row[wo], bb, b_is_two));
            }
          }
        }
      }
    });
  });
  return std::make_tuple(out, linear, norm);
}

}  // namespace

TORCH_LIBRARY_IMPL(kdfast, CPU, m) { m.impl("bcos_conv2d", &bcos_conv2d_cpu); }

}  // namespace kdfast
