// Python binding of the regional attention map kernel.
#include <torch/extension.h>

#include <vector>

std::vector<torch::Tensor> reg_att_map_generator_cuda_forward(torch::Tensor mask, float threshold,
                                                              int min_pixels, int margin);

std::vector<torch::Tensor> reg_att_map_generator_forward(torch::Tensor mask, float threshold,
                                                         int min_pixels, int margin) {
  TORCH_CHECK(mask.is_cuda(), "reg_att_map_generator: mask must be a CUDA tensor");
  TORCH_CHECK(mask.dim() == 4, "reg_att_map_generator: mask must be (B, K, H, W)");
  TORCH_CHECK(mask.scalar_type() == torch::kFloat, "reg_att_map_generator: mask must be float32");
  TORCH_CHECK(mask.size(1) >= 1, "reg_att_map_generator: mask needs a background channel");
  return reg_att_map_generator_cuda_forward(mask.contiguous(), threshold, min_pixels, margin);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &reg_att_map_generator_forward,
        "Regional attention maps and boxes (CUDA)", py::arg("mask"), py::arg("threshold"),
        py::arg("min_pixels"), py::arg("margin"));
}
