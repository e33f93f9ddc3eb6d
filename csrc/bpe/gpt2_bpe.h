// GPT-2 byte-level BPE encoder for ASCII text (CPU, no torch): a hand-written pre-tokenizer equivalent to GPT-2's
// regex on ASCII, a cache from pre-token bytes to ids, and pairwise merges by merge priority for cache misses.
// Text with a non-ASCII code point is left to the caller (omni_mega/data/bpe.py routes it to tiktoken), because
// \p{L}/\p{N}/\s outside ASCII depend on the Unicode tables of the regex engine.
#pragma once

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace omni_mega::bpe {

// Open-addressing hash map from pre-token bytes to their ids (keys and ids live in two arenas). Cleared whole when
// it reaches max_entries, so memory stays bounded on inputs with unbounded distinct pre-tokens.
class PieceCache {
 public:
  explicit PieceCache(size_t max_entries);
  // The cached ids of `piece` ({nullptr, 0} on a miss).
  std::pair<const uint32_t*, size_t> find(std::string_view piece, uint64_t hash) const;
  void insert(std::string_view piece, uint64_t hash, const uint32_t* ids, size_t n);
  size_t size() const { return count_; }
  void clear();

 private:
  struct Slot {
    uint64_t hash;
    uint32_t key_off, key_len, ids_off, ids_len;  // key_len == 0: empty slot (pieces are never empty)
  };
  size_t slot_of(std::string_view piece, uint64_t hash) const;  // the slot holding `piece`, or the empty one
  void grow();

  size_t max_entries_, count_ = 0;
  std::vector<Slot> slots_;
  std::string keys_;
  std::vector<uint32_t> ids_;
};

class GPT2Encoder {
 public:
  // byte_ids[b]: id of the one-byte token b (256 entries). merges[r] = {left id, right id, merged id}: merge rule r,
  // in priority order (r = 0 merges first). max_cache_entries bounds the pre-token cache.
  GPT2Encoder(const std::vector<uint32_t>& byte_ids, const std::vector<std::array<uint32_t, 3>>& merges,
              size_t max_cache_entries);

  // Appends the ids of ASCII `text` to `out` (the caller guarantees ASCII) and returns true; returns false and
  // appends nothing when a pre-token is longer than kMaxPiece bytes (the reference's merge loop is quadratic in
  // the pre-token length: 20 KB of random letters take 76 ms here, tiktoken 4 ms), so the caller routes such rare
  // texts (long runs without spaces) to tiktoken.
  bool encode_ascii(std::string_view text, std::vector<uint32_t>& out);
  static constexpr size_t kMaxPiece = 256;
  // Appends the BPE ids of one pre-token to `out`, bypassing the cache (GPT-2's merge loop, see the .cpp).
  void merge_piece(std::string_view piece, std::vector<uint32_t>& out) const;
  // Serializes encode_ascii calls on one encoder (the cache is not thread-safe; the GIL is released around them).
  std::mutex& mutex() { return mutex_; }

  uint64_t hits = 0, misses = 0;  // cache statistics of multi-byte pre-tokens
  PieceCache cache;
  bool use_cache = true;

 private:
  static constexpr uint64_t kNoMerge = ~uint64_t(0);
  uint64_t pair_rank(uint32_t left, uint32_t right) const;  // (rank << 32 | merged id), or kNoMerge
  void emit_piece(std::string_view piece, std::vector<uint32_t>& out);

  std::array<uint32_t, 256> byte_ids_{};
  // (left id << 32 | right id) -> (rank << 32 | merged id)
  std::unordered_map<uint64_t, uint64_t> pair_ranks_;
  std::mutex mutex_;
};

}  // namespace omni_mega::bpe
