// Regional attention maps on the GPU: per-object extents by a block reduction, then the 0/1 map.
#include <climits>
#include <vector>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/types.h>

namespace {

constexpr int kThreads = 256;
constexpr int kMaxBlocksPerObject = 64;
constexpr int kStats = 5;  // count, x_min, x_max, y_min, y_max

__global__ void init_extents_kernel(int n_objects, int *__restrict__ stats) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n_objects) {
    stats[i * kStats + 0] = 0;
    stats[i * kStats + 1] = INT_MAX;
    stats[i * kStats + 2] = -1;
    stats[i * kStats + 3] = INT_MAX;
    stats[i * kStats + 4] = -1;
  }
}

// blockIdx.y is the object (b, k >= 1); blockIdx.x splits its pixels.
__global__ void object_extents_kernel(const float *__restrict__ mask, int channels, int height,
                                      int width, float threshold, int *__restrict__ stats) {
  const int object = blockIdx.y;
  const int b = object / (channels - 1);
  const int k = object % (channels - 1) + 1;
  const int n_pixels = height * width;
  const float *m = mask + (static_cast<long long>(b) * channels + k) * n_pixels;

  int count = 0, x_min = INT_MAX, x_max = -1, y_min = INT_MAX, y_max = -1;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < n_pixels; j += gridDim.x * blockDim.x) {
    if (m[j] >= threshold) {
      const int x = j % width;
      const int y = j / width;
      ++count;
      x_min = min(x_min, x);
      x_max = max(x_max, x);
      y_min = min(y_min, y);
      y_max = max(y_max, y);
    }
  }

  __shared__ int block_stats[kStats];
  if (threadIdx.x == 0) {
    block_stats[0] = 0;
    block_stats[1] = INT_MAX;
    block_stats[2] = -1;
    block_stats[3] = INT_MAX;
    block_stats[4] = -1;
  }
  __syncthreads();
  if (count > 0) {
    atomicAdd(&block_stats[0], count);
    atomicMin(&block_stats[1], x_min);
    atomicMax(&block_stats[2], x_max);
    atomicMin(&block_stats[3], y_min);
    atomicMax(&block_stats[4], y_max);
  }
  __syncthreads();
  if (threadIdx.x == 0 && block_stats[0] > 0) {
    int *s = stats + object * kStats;
    atomicAdd(&s[0], block_stats[0]);
    atomicMin(&s[1], block_stats[1]);
    atomicMax(&s[2], block_stats[2]);
    atomicMin(&s[3], block_stats[3]);
    atomicMax(&s[4], block_stats[4]);
  }
}

__global__ void write_map_kernel(const int *__restrict__ stats, int channels, int height,
                                 int width, int min_pixels, int margin, long long total,
                                 float *__restrict__ att_map, int *__restrict__ boxes) {
  const int n_pixels = height * width;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long plane = i / n_pixels;
    const int pixel = static_cast<int>(i % n_pixels);
    const int k = static_cast<int>(plane % channels);
    const int b = static_cast<int>(plane / channels);
    int box[4] = {0, 0, 0, 0};
    float value = 0.f;
    if (k > 0) {
      const int *s = stats + (b * (channels - 1) + k - 1) * kStats;
      if (s[0] < min_pixels) {
        box[0] = 0;
        box[1] = width - 1;
        box[2] = 0;
        box[3] = height - 1;
      } else {
        box[0] = max(s[1] - margin, 0);
        box[1] = min(s[2] + margin, width - 1);
        box[2] = max(s[3] - margin, 0);
        box[3] = min(s[4] + margin, height - 1);
      }
      const int x = pixel % width;
      const int y = pixel / width;
      value = (x >= box[0] && x <= box[1] && y >= box[2] && y <= box[3]) ? 1.f : 0.f;
    }
    att_map[i] = value;
    if (pixel == 0) {
      for (int c = 0; c < 4; ++c) boxes[plane * 4 + c] = box[c];
    }
  }
}

}  // namespace

std::vector<torch::Tensor> reg_att_map_generator_cuda_forward(torch::Tensor mask, float threshold,
                                                              int min_pixels, int margin) {
  const c10::cuda::CUDAGuard guard(mask.device());
  const int batch = mask.size(0);
  const int channels = mask.size(1);
  const int height = mask.size(2);
  const int width = mask.size(3);
  auto int_options = mask.options().dtype(torch::kInt);
  torch::Tensor att_map = torch::empty_like(mask);
  torch::Tensor boxes = torch::empty({batch, channels, 4}, int_options);
  const long long total = static_cast<long long>(batch) * channels * height * width;
  if (total == 0) return {att_map, boxes};

  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int n_objects = batch * (channels - 1);
  torch::Tensor stats = torch::empty({std::max(n_objects, 1), kStats}, int_options);
  if (n_objects > 0) {
    init_extents_kernel<<<(n_objects + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        n_objects, stats.data_ptr<int>());
    const int n_pixels = height * width;
    const int blocks_x = std::min((n_pixels + kThreads - 1) / kThreads, kMaxBlocksPerObject);
    dim3 grid(blocks_x, n_objects);
    object_extents_kernel<<<grid, kThreads, 0, stream>>>(mask.data_ptr<float>(), channels, height,
                                                         width, threshold, stats.data_ptr<int>());
  }
  const long long wanted = (total + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(std::min<long long>(wanted, 65535));
  write_map_kernel<<<blocks, kThreads, 0, stream>>>(stats.data_ptr<int>(), channels, height, width,
                                                    min_pixels, margin, total,
                                                    att_map.data_ptr<float>(),
                                                    boxes.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {att_map, boxes};
}
