// GPT-2 BPE on ASCII text: pre-tokenizer, pre-token cache, merges. See gpt2_bpe.h.
#include "bpe/gpt2_bpe.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace omni_mega::bpe {
namespace {

// ASCII classes under GPT-2's regex (checked against the `regex` module for all 128 code points by the tests):
// \s is exactly \t \n \v \f \r and space (0x1C-0x1F are not White_Space), \p{L} is A-Z a-z, \p{N} is 0-9, and
// everything else (punctuation, other control characters, DEL) is in [^\s\p{L}\p{N}].
enum Cls : uint8_t { kOther = 0, kLetter = 1, kDigit = 2, kSpace = 3 };

constexpr std::array<uint8_t, 128> make_classes() {
  std::array<uint8_t, 128> t{};
  for (int c = 'a'; c <= 'z'; ++c) t[c] = kLetter;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] = kLetter;
  for (int c = '0'; c <= '9'; ++c) t[c] = kDigit;
  for (int c : {' ', '\t', '\n', '\v', '\f', '\r'}) t[c] = kSpace;
  return t;
}
constexpr std::array<uint8_t, 128> kClass = make_classes();

inline uint8_t cls(char c) { return kClass[static_cast<unsigned char>(c) & 0x7F]; }

// A fast 64-bit hash of short byte strings (pre-tokens average ~5 bytes).
inline uint64_t hash_bytes(const char* p, size_t n) {
  uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
    h ^= h >> 31;
    p += 8;
    n -= 8;
  }
  uint64_t w = 0;
  std::memcpy(&w, p, n);
  h = (h ^ w) * 0x94d049bb133111ebull;
  return h ^ (h >> 29);
}

// Length of GPT-2's contraction at s[i] ('s 't 'm 'd: 2; 're 've 'll: 3; else 0). Lowercase only, as the regex.
inline size_t contraction(std::string_view s, size_t i) {
  if (s[i] != '\'' || i + 1 >= s.size()) return 0;
  char a = s[i + 1];
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (i + 2 < s.size()) {
    char b = s[i + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  }
  return 0;
}

// End of the pre-token starting at s[i]: the first alternative of
// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ that matches, as the regex engine
// takes it (leftmost alternative, greedy runs).
inline size_t piece_end(std::string_view s, size_t i) {
  const size_t n = s.size();
  if (size_t c = contraction(s, i)) return i + c;
  size_t k = i;
  if (s[i] == ' ' && i + 1 < n && cls(s[i + 1]) != kSpace) k = i + 1;  // the optional space before a run
  const uint8_t ck = cls(s[k]);
  size_t j = k + 1;
  if (ck != kSpace) {  // a letter, digit or other-symbol run
    while (j < n && cls(s[j]) == ck) ++j;
    return j;
  }
  while (j < n && cls(s[j]) == kSpace) ++j;
  // \s+(?!\S): before a non-space, a run of two or more leaves its last character to the next pre-token (so " word"
  // keeps its space); a single whitespace character before a non-space is taken by the final \s+.
  if (j < n && j - i >= 2) --j;
  return j;
}

constexpr size_t kMaxCachedPiece = 64;  // longer pre-tokens are rare; caching them would only fill the arena

}  // namespace

PieceCache::PieceCache(size_t max_entries) : max_entries_(max_entries) { clear(); }

void PieceCache::clear() {
  slots_.assign(1 << 12, Slot{0, 0, 0, 0, 0});
  keys_.clear();
  ids_.clear();
  count_ = 0;
}

size_t PieceCache::slot_of(std::string_view piece, uint64_t hash) const {
  const size_t mask = slots_.size() - 1;
  size_t i = hash & mask;
  while (true) {
    const Slot& s = slots_[i];
    if (s.key_len == 0) return i;
    if (s.hash == hash && s.key_len == piece.size() &&
        std::memcmp(keys_.data() + s.key_off, piece.data(), piece.size()) == 0)
      return i;
    i = (i + 1) & mask;
  }
}

std::pair<const uint32_t*, size_t> PieceCache::find(std::string_view piece, uint64_t hash) const {
  const Slot& s = slots_[slot_of(piece, hash)];
  if (s.key_len == 0) return {nullptr, 0};
  return {ids_.data() + s.ids_off, s.ids_len};
}

void PieceCache::grow() {
  std::vector<Slot> old(slots_.size() * 2, Slot{0, 0, 0, 0, 0});
  old.swap(slots_);
  const size_t mask = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.key_len == 0) continue;
    size_t i = s.hash & mask;
    while (slots_[i].key_len != 0) i = (i + 1) & mask;
    slots_[i] = s;
  }
}

void PieceCache::insert(std::string_view piece, uint64_t hash, const uint32_t* ids, size_t n) {
  if (max_entries_ == 0) return;
  if (count_ >= max_entries_ || keys_.size() + piece.size() > std::numeric_limits<uint32_t>::max() / 2 ||
      ids_.size() + n > std::numeric_limits<uint32_t>::max() / 2)
    clear();
  if ((count_ + 1) * 2 > slots_.size()) grow();  // load factor <= 1/2 keeps probe chains short
  const size_t i = slot_of(piece, hash);
  if (slots_[i].key_len != 0) return;  // already cached
  slots_[i] = Slot{hash, static_cast<uint32_t>(keys_.size()), static_cast<uint32_t>(piece.size()),
                   static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(n)};
  keys_.append(piece);
  ids_.insert(ids_.end(), ids, ids + n);
  ++count_;
}

GPT2Encoder::GPT2Encoder(const std::vector<uint32_t>& byte_ids, const std::vector<std::array<uint32_t, 3>>& merges,
                         size_t max_cache_entries)
    : cache(max_cache_entries) {
  if (byte_ids.size() != 256)
    throw std::invalid_argument("byte_ids: expected 256 entries (one id per byte), got " +
                                std::to_string(byte_ids.size()));
  std::copy(byte_ids.begin(), byte_ids.end(), byte_ids_.begin());
  pair_ranks_.reserve(merges.size() * 2);
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& m = merges[r];
    const uint64_t key = (uint64_t(m[0]) << 32) | m[1];
    pair_ranks_.emplace(key, (uint64_t(r) << 32) | m[2]);  // emplace keeps the first (highest-priority) rule
  }
}

uint64_t GPT2Encoder::pair_rank(uint32_t left, uint32_t right) const {
  auto it = pair_ranks_.find((uint64_t(left) << 32) | right);
  return it == pair_ranks_.end() ? kNoMerge : it->second;
}

// GPT-2's merge loop, as its reference implementation runs it: find the adjacent pair with the best (lowest) merge
// rank, merge every occurrence of that pair left to right, repeat until no adjacent pair has a rule. The rank of
// each adjacent pair is kept in `rank` and looked up again only where a merge changed a neighbour (a miss costs
// ~n + 2 * merges hash lookups instead of ~n * merges).
void GPT2Encoder::merge_piece(std::string_view piece, std::vector<uint32_t>& out) const {
  const size_t n0 = piece.size();
  std::vector<uint32_t> parts(n0), next_parts;
  std::vector<uint64_t> rank(n0 > 0 ? n0 - 1 : 0), next_rank;
  std::vector<int64_t> origin;  // per new part: its index before this round, or -1 when it was just merged
  for (size_t i = 0; i < n0; ++i) parts[i] = byte_ids_[static_cast<unsigned char>(piece[i])];
  for (size_t i = 0; i + 1 < n0; ++i) rank[i] = pair_rank(parts[i], parts[i + 1]);
  while (parts.size() > 1) {
    const uint64_t best = *std::min_element(rank.begin(), rank.end());
    if (best == kNoMerge) break;
    // (rank << 32 | merged id) is unique per rule, so rank[i] == best marks exactly the occurrences of the pair.
    next_parts.clear();
    origin.clear();
    for (size_t i = 0; i < parts.size();) {
      if (i + 1 < parts.size() && rank[i] == best) {
        next_parts.push_back(static_cast<uint32_t>(best));
        origin.push_back(-1);
        i += 2;
      } else {
        next_parts.push_back(parts[i]);
        origin.push_back(static_cast<int64_t>(i));
        i += 1;
      }
    }
    next_rank.resize(next_parts.size() - 1);
    for (size_t k = 0; k + 1 < next_parts.size(); ++k) {
      const bool untouched = origin[k] >= 0 && origin[k + 1] == origin[k] + 1;
      next_rank[k] = untouched ? rank[origin[k]] : pair_rank(next_parts[k], next_parts[k + 1]);
    }
    parts.swap(next_parts);
    rank.swap(next_rank);
  }
  out.insert(out.end(), parts.begin(), parts.end());
}

void GPT2Encoder::emit_piece(std::string_view piece, std::vector<uint32_t>& out) {
  if (piece.size() == 1) {  // one byte is one token: no lookup
    out.push_back(byte_ids_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (!use_cache || piece.size() > kMaxCachedPiece) {
    merge_piece(piece, out);
    return;
  }
  const uint64_t h = hash_bytes(piece.data(), piece.size());
  auto [ids, n] = cache.find(piece, h);
  if (ids != nullptr) {
    ++hits;
    out.insert(out.end(), ids, ids + n);
    return;
  }
  ++misses;
  const size_t start = out.size();
  merge_piece(piece, out);
  cache.insert(piece, h, out.data() + start, out.size() - start);
}

bool GPT2Encoder::encode_ascii(std::string_view text, std::vector<uint32_t>& out) {
  const size_t start = out.size();
  for (size_t i = 0; i < text.size();) {
    const size_t j = piece_end(text, i);
    if (j - i > kMaxPiece) {  // the merge loop is quadratic in the piece length: leave this text to the caller
      out.resize(start);
      return false;
    }
    emit_piece(text.substr(i, j - i), out);
    i = j;
  }
  return true;
}

}  // namespace omni_mega::bpe
