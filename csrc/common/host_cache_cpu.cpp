// The recycling pool behind empty_recycled (see host_cache.h for why it exists).
#include "common/host_cache.h"

#include <torch/library.h>

#include <cstdlib>
#include <map>
#include <mutex>

namespace omni_mega {
namespace {

constexpr size_t kMiB = size_t(1) << 20;
constexpr size_t kBlock = 2 * kMiB;  // sizes round up to this (and blocks align to it: huge-page friendly)

struct Pool {
  std::mutex mu;
  std::multimap<size_t, void*> free_blocks;  // size -> block
  size_t free_bytes = 0;
  size_t limit = 0;

  Pool() {
    const char* env = std::getenv("OMNI_MEGA_HOST_CACHE_MB");
    limit = (env ? static_cast<size_t>(std::strtoull(env, nullptr, 10)) : 2048) * kMiB;
  }

  // A cached block of at least `bytes` and at most twice that (a larger one would waste memory), or a new one.
  std::pair<void*, size_t> take(size_t bytes) {
    const size_t size = (bytes + kBlock - 1) / kBlock * kBlock;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = free_blocks.lower_bound(size);
      if (it != free_blocks.end() && it->first <= 2 * size) {
        std::pair<void*, size_t> block{it->second, it->first};
        free_bytes -= it->first;
        free_blocks.erase(it);
        return block;
      }
    }
    void* p = std::aligned_alloc(kBlock, size);
    if (p == nullptr) {  // out of memory: give the cached blocks back to the system and try once more
      clear();
      p = std::aligned_alloc(kBlock, size);
    }
    TORCH_CHECK(p != nullptr, "empty_recycled: could not allocate ", size, " bytes");
    return {p, size};
  }

  void give_back(void* p, size_t size) {
    std::lock_guard<std::mutex> lock(mu);
    if (free_bytes + size > limit) {
      std::free(p);
      return;
    }
    free_blocks.emplace(size, p);
    free_bytes += size;
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mu);
    for (auto& kv : free_blocks) std::free(kv.second);
    free_blocks.clear();
    free_bytes = 0;
  }
};

Pool& pool() {
  static Pool* p = new Pool();  // never destroyed: tensors may outlive static destruction at exit
  return *p;
}

}  // namespace

at::Tensor empty_recycled(at::IntArrayRef sizes, at::ScalarType dtype) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (bytes < kMiB || pool().limit == 0) return at::empty(sizes, at::TensorOptions().dtype(dtype));
  auto [ptr, size] = pool().take(bytes);
  return at::from_blob(
      ptr, sizes, [size](void* p) { pool().give_back(p, size); }, at::TensorOptions().dtype(dtype));
}

int64_t host_cache_free_bytes() {
  std::lock_guard<std::mutex> lock(pool().mu);
  return static_cast<int64_t>(pool().free_bytes);
}

void host_cache_clear() { pool().clear(); }

}  // namespace omni_mega
