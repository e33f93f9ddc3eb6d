// The recycling pool behind empty_recycled (see host_cache.h for why it exists).
#include "common/host_cache.h"

#include <torch/library.h>

#include <c10/util/safe_numerics.h>

#include <cerrno>
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

  Pool() : limit(limit_from_env()) {}

  // OMNI_MEGA_HOST_CACHE_MB as bytes. A value that is not a whole number in 0..kMaxMiB is refused: strtoull alone
  // read "-1" as 2^64 - 1 and "abc" as 0, and the product with kMiB wrapped.
  static size_t limit_from_env() {
    constexpr unsigned long long kMaxMiB = 1ull << 30;  // 1 PiB: more than any host holds, far from overflow
    const char* env = std::getenv("OMNI_MEGA_HOST_CACHE_MB");
    if (env == nullptr) return 2048 * kMiB;
    char* end = nullptr;
    errno = 0;
    const unsigned long long mib = std::strtoull(env, &end, 10);
    TORCH_CHECK(end != env && *end == '\0' && env[0] != '-' && errno == 0 && mib <= kMaxMiB,
                "OMNI_MEGA_HOST_CACHE_MB must be a whole number of MiB in 0..", kMaxMiB, ", got \"", env, "\"");
    return static_cast<size_t>(mib) * kMiB;
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
  // Checked: a wrapped product would hand out a small block for a large tensor.
  int64_t bytes_i = static_cast<int64_t>(c10::elementSize(dtype));
  for (int64_t s : sizes) {
    TORCH_CHECK(s >= 0, "empty_recycled: negative size ", s, " in ", sizes);
    TORCH_CHECK(!c10::mul_overflows(bytes_i, s, &bytes_i), "empty_recycled: a tensor of shape ", sizes, " and dtype ",
                dtype, " overflows int64 bytes");
  }
  const size_t bytes = static_cast<size_t>(bytes_i);
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
