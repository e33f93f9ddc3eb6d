// Byte-level BPE encoder (CPU, no torch): GPT-2's files and Hugging Face byte-level `tokenizer.json` BPEs
// (GPT-2, Llama-3, Qwen2/Qwen3 and their relatives), with the pre-tokenizer regex written out by hand for every
// code point (no regex engine), a pre-token cache, and the reference merge loop on ids for cache misses.
//
// Exactness: each pre-tokenizer below is the leftmost-alternative, greedy-run reading of one regex (spelled out at
// its definition) with \p{L}, \p{N} and \s taken from a table generated from the reference engine itself
// (gen_unicode_tables.py): the `regex` module for GPT-2's files (Unicode 17.0 for regex 2026.11.15), Oniguruma as
// built into HF `tokenizers` for tokenizer.json files (Unicode 16.0 for tokenizers 0.23.3). The merge loop follows
// the reference of the tokenizer kind (GPT-2: merge every occurrence of the best pair, left to right; HF: one
// occurrence at a time, lowest (rank, position) first); the two differ only on merge tables that rank a pair below
// one of its parts' own merge, which trained BPEs never do.
//
// What the caller handles (encode() returns a status and appends nothing): text containing an added token that the
// reference would match (kAddedToken) and, for NFC tokenizers, text that may change under NFC (kNeedsNFC).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace omni_mega::bpe {

// Pre-tokenizer regexes (see piece_end_* in the .cpp for the exact alternatives):
//   kGPT2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   kCL100K: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|
//            \s+(?!\S)|\s+        (D = max_digits: 3 for cl100k / Llama-3, 1 for Qwen2 / Qwen3)
enum class Pattern : uint8_t { kGPT2 = 0, kCL100K = 1 };
// Whose Unicode tables \p{L}, \p{N}, \s follow.
enum class Profile : uint8_t { kRegex = 0, kHF = 1 };
enum class MergeOrder : uint8_t { kGPT2 = 0, kHF = 1 };

struct Options {
  Pattern pattern = Pattern::kGPT2;
  int max_digits = 3;
  Profile profile = Profile::kRegex;
  MergeOrder order = MergeOrder::kGPT2;
  bool ignore_merges = false;  // HF: a pre-token that is itself in the vocab is that one id
  bool nfc_check = false;      // HF NFC normalizer: report text that may change under NFC (kNeedsNFC)
};

// A growable uint32 buffer without zero-initialisation (std::vector::resize would write every slot twice).
class IdBuf {
 public:
  IdBuf() = default;
  IdBuf(const IdBuf&) = delete;
  IdBuf& operator=(const IdBuf&) = delete;
  ~IdBuf() { std::free(data_); }
  void reserve(size_t cap);
  inline void ensure(size_t extra) {
    if (size_ + extra > cap_) reserve((size_ + extra) * 2);
  }
  inline void push(uint32_t v) {
    ensure(1);
    data_[size_++] = v;
  }
  inline void push_unchecked(uint32_t v) { data_[size_++] = v; }
  void append(const uint32_t* p, size_t n);
  void resize_down(size_t n) { size_ = n; }
  uint32_t* data() { return data_; }
  const uint32_t* data() const { return data_; }
  size_t size() const { return size_; }
  // Hands the malloc'ed block to the caller (who frees it with std::free).
  uint32_t* release() {
    uint32_t* p = data_;
    data_ = nullptr;
    size_ = cap_ = 0;
    return p;
  }

 private:
  uint32_t* data_ = nullptr;
  size_t size_ = 0, cap_ = 0;
};

// (left id, right id) -> (rank << 32 | merged id), open addressing (a std::unordered_map lookup costs ~3x more).
class PairTable {
 public:
  static constexpr uint64_t kNone = ~uint64_t(0);
  // A pair listed twice keeps its last rank, as GPT-2's dict(zip(merges, range)) and HF's HashMap do.
  void build(const uint32_t* triples, size_t count);
  inline uint64_t find(uint32_t left, uint32_t right) const {
    const uint64_t key = (uint64_t(left) << 32) | right;
    size_t i = (key * 0x9E3779B97F4A7C15ull) >> shift_;
    while (true) {
      const Entry& e = entries_[i];
      if (e.key == key) return e.value;
      if (e.key == kEmpty) return kNone;
      i = (i + 1) & mask_;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  struct Entry {
    uint64_t key, value;
  };
  std::vector<Entry> entries_;
  size_t mask_ = 0;
  int shift_ = 64;
};

// Pre-token bytes -> ids. Pre-tokens of up to 8 bytes (85% of English ones) live in a table of 16-byte slots
// (key bytes, id, length, count), longer ones in a table of 32-byte slots holding their first 16 bytes (the rest, for
// the few over 16 bytes, in an arena); one id lives in the slot, more in an arena. In front of the short table sits
// a direct-mapped copy of recently used entries of 2-7 bytes and one or two ids (4096 x 16 bytes): pre-token
// frequencies are Zipfian (the 1,024 most frequent of the KJV's 14K distinct pre-tokens are 91% of its
// pre-tokens), and lookups in the main table (512 KB) were mostly waiting for memory. Measured on the KJV, one
// thread, MB per CPU-second on this shared 2-core machine (load 4-8, so +-15%): 32-byte slots throughout ~60;
// 16-byte slots and the ASCII letter-run shortcut (encode_pieces) ~150; with a 1024-entry front copy ~220-250,
// 4096 entries +5% (C++ harness, best of 25, three interleaved rounds). Slower, and dropped: prefetching the slots
// of a batch of 16 pre-tokens before looking them up (170 vs 214, best of 15), cutting a whole text into
// pre-tokens before any lookup (143-186 vs 189-242, best of 25). Cleared whole when it reaches max_entries, so
// memory stays bounded.
class PieceCache {
 public:
  explicit PieceCache(size_t max_entries);
  // Appends the cached ids of piece [p, p + len) (len >= 2) to out, which has room for len ids, and returns true;
  // or returns false. `end`: the end of the text the piece lies in (keys are loaded a word at a time where the
  // words are readable).
  inline bool lookup(const uint8_t* p, size_t len, const uint8_t* end, IdBuf& out);
  void insert(const uint8_t* p, size_t len, const uint8_t* end, const uint32_t* ids, size_t n);
  size_t size() const { return count_; }
  void clear();

 private:
  struct Short {
    uint64_t key;  // the bytes, zero padded
    uint32_t val;  // the id (n == 1), else the offset of the ids in ids_
    uint16_t len;  // 0: empty
    uint16_t n;
  };
  struct Long {
    uint64_t k0, k1;  // the first 16 bytes, zero padded
    uint32_t val, off;  // off: bytes 16.. in keys_
    uint16_t len, n;
    uint32_t unused;
  };
  struct Front {
    uint64_t key;  // the bytes with the length in the top byte (pieces of 2-7 bytes); 0: empty
    uint32_t a, b;  // one or two ids (b == kNoId: one)
  };
  static_assert(sizeof(Short) == 16 && sizeof(Long) == 32 && sizeof(Front) == 16);
  static constexpr uint32_t kNoId = 0xFFFFFFFFu;
  static constexpr int kFrontBits = 12;

  static inline uint64_t load(const uint8_t* p, size_t len, const uint8_t* end) {  // len <= 8
    uint64_t k = 0;
    if (end - p >= 8) {
      std::memcpy(&k, p, 8);
      return len == 8 ? k : k & ((uint64_t(1) << (8 * len)) - 1);
    }
    std::memcpy(&k, p, len);
    return k;
  }
  static inline uint64_t mix(uint64_t a, uint64_t b, size_t len) {
    uint64_t h = (a ^ (uint64_t(len) << 56)) * 0x9E3779B97F4A7C15ull;
    h ^= b * 0xC2B2AE3D27D4EB4Full;
    return h ^ (h >> 29);
  }
  bool lookup_long(const uint8_t* p, size_t len, const uint8_t* end, IdBuf& out) const;
  void push(uint32_t val, uint16_t n, IdBuf& out) const {
    if (n == 1)
      out.push_unchecked(val);
    else
      out.append(ids_.data() + val, n);
  }
  template <class T>
  static void grow(std::vector<T>& slots, size_t& mask);

  size_t max_entries_, count_ = 0, short_count_ = 0, long_count_ = 0, short_mask_ = 0, long_mask_ = 0;
  std::vector<Short> short_;
  std::vector<Front> front_;
  std::vector<Long> long_;
  std::vector<uint8_t> keys_;
  std::vector<uint32_t> ids_;
};

inline bool PieceCache::lookup(const uint8_t* p, size_t len, const uint8_t* end, IdBuf& out) {
  if (len > 8) return lookup_long(p, len, end, out);
  const uint64_t k = load(p, len, end);
  const uint64_t h = mix(k, 0, len);
  Front* f = nullptr;
  uint64_t fk = 0;
  if (len < 8) {  // the front copy: the length fits in the key's top byte
    fk = k | (uint64_t(len) << 56);
    f = &front_[h >> (64 - kFrontBits)];
    if (f->key == fk) {
      out.push_unchecked(f->a);
      if (f->b != kNoId) out.push_unchecked(f->b);
      return true;
    }
  }
  for (size_t i = h & short_mask_;; i = (i + 1) & short_mask_) {
    const Short& s = short_[i];
    if (s.key == k && s.len == len) {
      if (f != nullptr && s.n <= 2)
        *f = s.n == 1 ? Front{fk, s.val, kNoId} : Front{fk, ids_[s.val], ids_[s.val + 1]};
      push(s.val, s.n, out);
      return true;
    }
    if (s.len == 0) return false;
  }
}

// Per-thread mutable state: the cache, scratch buffers of the merge loop, statistics.
struct Workspace {
  explicit Workspace(size_t cache_entries) : cache(cache_entries) {}
  PieceCache cache;
  std::vector<uint32_t> parts;
  std::vector<uint64_t> ranks;
  std::vector<int32_t> prev, next;
  std::vector<std::pair<uint64_t, uint32_t>> heap, round;
  uint64_t hits = 0, misses = 0;
};

class Encoder {
 public:
  static constexpr int64_t kAddedToken = -2;  // the text contains an added token the reference would match
  static constexpr int64_t kNeedsNFC = -3;    // the text may change under NFC
  static constexpr size_t kMaxCachedPiece = 256;
  static constexpr size_t kLinearMax = 48;  // longer pre-tokens merge with a heap (O(n log n), not O(n^2))

  // byte_ids[b]: id of the one-byte token b. merges: `count` (left, right, merged) id triples in priority order.
  // vocab: byte strings -> id (used with ignore_merges). added: the added tokens' contents to detect.
  // prefix, suffix: ids around every text (a post-processor's special tokens, e.g. Llama-3's <|begin_of_text|>).
  Encoder(const std::vector<uint32_t>& byte_ids, const uint32_t* merges, size_t count, const Options& options,
          std::unordered_map<std::string, uint32_t> vocab, std::vector<std::string> added,
          std::vector<uint32_t> prefix, std::vector<uint32_t> suffix, size_t cache_entries);

  // Appends the ids of UTF-8 `text` to out and returns their number, or returns kAddedToken / kNeedsNFC and
  // appends nothing. check_nfc = false: the caller has normalized the text already. Thread-safe with one
  // Workspace per thread.
  int64_t encode(std::string_view text, IdBuf& out, Workspace& ws, bool check_nfc = true) const;
  // The pre-tokens of `text` as (begin, end) byte offsets.
  void pretokenize(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;
  // The BPE ids of one pre-token's bytes, without the cache. algorithm: 0 auto, 1 linear scan, 2 heap.
  void merge(const uint8_t* p, size_t n, IdBuf& out, Workspace& ws, int algorithm = 0) const;

  bool needs_nfc(std::string_view text) const;
  bool contains_added(std::string_view text) const;

  Workspace* acquire();
  void release(Workspace* ws);
  template <class F>
  void for_each_workspace(F f) {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    for (auto& ws : all_) f(*ws);
  }

  const Options& options() const { return options_; }
  bool use_cache = true;

 private:
  inline uint8_t cls(const uint8_t* s, size_t n, size_t i, size_t& len) const;
  size_t piece_end_gpt2(const uint8_t* s, size_t n, size_t i) const;
  size_t piece_end_cl100k(const uint8_t* s, size_t n, size_t i) const;
  template <Pattern P>
  void encode_pieces(const uint8_t* s, size_t n, IdBuf& out, Workspace& ws) const;
  void merge_linear(const uint8_t* p, size_t n, IdBuf& out, Workspace& ws) const;
  void merge_heap(const uint8_t* p, size_t n, IdBuf& out, Workspace& ws) const;

  Options options_;
  const uint8_t* table_;  // class byte per code point (unicode_classes.inc)
  int shift_;             // profile's bits in it
  uint32_t byte_ids_[256];
  PairTable pairs_;
  std::unordered_map<std::string, uint32_t> vocab_;
  std::vector<std::string> added_;  // their contents; the views below point into these strings
  bool added_first_[256] = {};
  int single_first_ = -1;
  std::vector<size_t> added_lengths_;
  std::unordered_set<std::string_view> added_set_;
  std::vector<uint32_t> prefix_, suffix_;
  size_t cache_entries_;
  std::mutex pool_mutex_;
  std::vector<std::unique_ptr<Workspace>> all_;
  std::vector<Workspace*> free_;
};

}  // namespace omni_mega::bpe
