// Byte-level BPE: Unicode classes, pre-tokenizers, pre-token cache, merges. See bytelevel_bpe.h.
#include "bpe/bytelevel_bpe.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <type_traits>

namespace omni_mega::bpe {
namespace {

enum Cls : uint8_t { kOther = 0, kLetter = 1, kDigit = 2, kSpace = 3 };
constexpr uint8_t kNfcBit = 0x10;
constexpr uint32_t kMaxCodePoint = 0x110000;

struct Run {
  uint32_t first;
  uint8_t value;
};
constexpr Run kRuns[] = {
#include "bpe/unicode_classes.inc"
};

// One class byte per code point (1.1 MB, built once from the runs; only the pages of scripts in use are touched).
const uint8_t* class_table() {
  static const std::vector<uint8_t> table = [] {
    std::vector<uint8_t> t(kMaxCodePoint, 0);
    constexpr size_t n = sizeof(kRuns) / sizeof(kRuns[0]);
    for (size_t r = 0; r < n; ++r) {
      const uint32_t end = r + 1 < n ? kRuns[r + 1].first : kMaxCodePoint;
      std::memset(t.data() + kRuns[r].first, kRuns[r].value, end - kRuns[r].first);
    }
    return t;
  }();
  return table.data();
}

inline bool is_rn(uint8_t b) { return b == '\r' || b == '\n'; }

inline bool ascii_letter(uint8_t c) { return static_cast<uint8_t>((c | 0x20) - 'a') < 26; }

constexpr uint64_t kHigh = 0x8080808080808080ull;

// The top bit of each byte of x that is an ASCII letter: with the top bits cleared (no carries between bytes) and
// each byte ORed with 0x20 (A-Z -> a-z, nothing else lands in a-z), adding 0x1F sets a byte's top bit iff it is
// >= 'a' and adding 0x05 iff it is > 'z'; bytes >= 0x80 are not ASCII letters.
inline uint64_t letters8(uint64_t x) {
  const uint64_t lower = (x & ~kHigh) | 0x2020202020202020ull;
  return (lower + 0x1F1F1F1F1F1F1F1Full) & ~(lower + 0x0505050505050505ull) & ~x & kHigh;
}

// The end of the run of ASCII letters starting at s[j], eight bytes at a time; *non_ascii: whether it stopped at a
// byte >= 0x80 (read off the same word, not loaded again).
inline size_t ascii_letter_run(const uint8_t* s, size_t n, size_t j, bool* non_ascii) {
  while (j + 8 <= n) {
    uint64_t x;
    std::memcpy(&x, s + j, 8);
    const uint64_t stop = ~letters8(x) & kHigh;
    if (stop) {
      const int p = __builtin_ctzll(stop) >> 3;
      *non_ascii = (x >> (8 * p)) & 0x80;
      return j + p;
    }
    j += 8;
  }
  while (j < n && ascii_letter(s[j])) ++j;
  *non_ascii = j < n && s[j] >= 0x80;
  return j;
}

// When the pre-token at s[i] is " ?" + a run starting with an ASCII letter (the common English pre-token, both
// patterns), its end as far as the ASCII letters go, and true; *non_ascii: the run stopped at a byte >= 0x80 (it
// may go on through non-ASCII letters). One 8-byte load decides and ends most such pre-tokens (words average ~4.5
// letters): on the KJV 216-233 -> 253-283 MB per CPU-second over testing the first bytes one by one and loading
// the stop byte again (C++ harness, best of 25, three interleaved rounds, load 3.5-5).
inline bool ascii_word(const uint8_t* s, size_t n, size_t i, size_t* j, bool* non_ascii) {
  if (i + 8 > n) {
    const size_t k = i + (s[i] == ' ');
    if (k >= n || !ascii_letter(s[k])) return false;
    *j = ascii_letter_run(s, n, k + 1, non_ascii);
    return true;
  }
  uint64_t x;
  std::memcpy(&x, s + i, 8);
  const int k = (x & 0xFF) == ' ';
  const uint64_t letters = letters8(x);
  if (!((letters >> (8 * k)) & 0x80)) return false;
  const uint64_t stop = ~letters & kHigh & (~uint64_t(0) << (8 * k + 8));  // non-letters after the first letter
  if (stop) {
    const int p = __builtin_ctzll(stop) >> 3;
    *non_ascii = (x >> (8 * p)) & 0x80;
    *j = i + p;
    return true;
  }
  *j = ascii_letter_run(s, n, i + 8, non_ascii);
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------------
// IdBuf, PairTable, PieceCache

void IdBuf::reserve(size_t cap) {
  if (cap <= cap_) return;
  auto* p = static_cast<uint32_t*>(std::realloc(data_, cap * sizeof(uint32_t)));
  if (p == nullptr) throw std::bad_alloc();
  data_ = p;
  cap_ = cap;
}

void IdBuf::append(const uint32_t* p, size_t n) {
  ensure(n);
  std::memcpy(data_ + size_, p, n * sizeof(uint32_t));
  size_ += n;
}

void PairTable::build(const uint32_t* triples, size_t count) {
  size_t cap = 16;
  while (cap < count * 2) cap <<= 1;
  entries_.assign(cap, Entry{kEmpty, 0});
  mask_ = cap - 1;
  shift_ = 64 - __builtin_ctzll(cap);
  for (size_t r = 0; r < count; ++r) {
    const uint32_t* m = triples + 3 * r;
    const uint64_t key = (uint64_t(m[0]) << 32) | m[1];
    size_t i = (key * 0x9E3779B97F4A7C15ull) >> shift_;
    while (entries_[i].key != kEmpty && entries_[i].key != key) i = (i + 1) & mask_;
    entries_[i] = Entry{key, (uint64_t(r) << 32) | m[2]};
  }
}

PieceCache::PieceCache(size_t max_entries) : max_entries_(max_entries) { clear(); }

void PieceCache::clear() {
  short_.assign(1 << 12, Short{0, 0, 0, 0});
  front_.assign(size_t(1) << kFrontBits, Front{0, 0, 0});
  long_.assign(1 << 10, Long{0, 0, 0, 0, 0, 0, 0});
  short_mask_ = short_.size() - 1;
  long_mask_ = long_.size() - 1;
  keys_.clear();
  ids_.clear();
  count_ = short_count_ = long_count_ = 0;
}

bool PieceCache::lookup_long(const uint8_t* p, size_t len, const uint8_t* end, IdBuf& out) const {
  uint64_t k0, k1;
  std::memcpy(&k0, p, 8);
  k1 = load(p + 8, std::min<size_t>(len - 8, 8), end);
  const uint64_t h = mix(k0, k1, len);
  for (size_t i = h & long_mask_;; i = (i + 1) & long_mask_) {
    const Long& s = long_[i];
    if (s.len == 0) return false;
    if (s.k0 == k0 && s.k1 == k1 && s.len == len &&
        (len <= 16 || std::memcmp(keys_.data() + s.off, p + 16, len - 16) == 0)) {
      push(s.val, s.n, out);
      return true;
    }
  }
}

template <class T>
void PieceCache::grow(std::vector<T>& slots, size_t& mask) {
  std::vector<T> old(slots.size() * 2, T{});
  old.swap(slots);
  mask = slots.size() - 1;
  for (const T& s : old) {
    if (s.len == 0) continue;
    uint64_t h;
    if constexpr (std::is_same_v<T, Short>)
      h = mix(s.key, 0, s.len);
    else
      h = mix(s.k0, s.k1, s.len);
    size_t i = h & mask;
    while (slots[i].len != 0) i = (i + 1) & mask;
    slots[i] = s;
  }
}

void PieceCache::insert(const uint8_t* p, size_t len, const uint8_t* end, const uint32_t* ids, size_t n) {
  if (max_entries_ == 0 || len < 2 || len > 0xFFFF || n == 0 || n > 0xFFFF) return;
  if (count_ >= max_entries_ || keys_.size() + len > std::numeric_limits<uint32_t>::max() / 2 ||
      ids_.size() + n > std::numeric_limits<uint32_t>::max() / 2)
    clear();
  uint32_t val = ids[0];
  auto store_ids = [&] {
    if (n != 1) {
      val = static_cast<uint32_t>(ids_.size());
      ids_.insert(ids_.end(), ids, ids + n);
    }
  };
  if (len <= 8) {
    if ((short_count_ + 1) * 2 > short_.size()) grow(short_, short_mask_);  // load <= 1/2: short probe chains
    const uint64_t k = load(p, len, end);
    size_t i = mix(k, 0, len) & short_mask_;
    for (; short_[i].len != 0; i = (i + 1) & short_mask_)
      if (short_[i].key == k && short_[i].len == len) return;  // already cached
    store_ids();
    short_[i] = Short{k, val, static_cast<uint16_t>(len), static_cast<uint16_t>(n)};
    ++short_count_;
  } else {
    if ((long_count_ + 1) * 2 > long_.size()) grow(long_, long_mask_);
    uint64_t k0, k1;
    std::memcpy(&k0, p, 8);
    k1 = load(p + 8, std::min<size_t>(len - 8, 8), end);
    size_t i = mix(k0, k1, len) & long_mask_;
    for (; long_[i].len != 0; i = (i + 1) & long_mask_) {
      const Long& s = long_[i];
      if (s.k0 == k0 && s.k1 == k1 && s.len == len &&
          (len <= 16 || std::memcmp(keys_.data() + s.off, p + 16, len - 16) == 0))
        return;
    }
    uint32_t off = 0;
    if (len > 16) {
      off = static_cast<uint32_t>(keys_.size());
      keys_.insert(keys_.end(), p + 16, p + len);
    }
    store_ids();
    long_[i] = Long{k0, k1, val, off, static_cast<uint16_t>(len), static_cast<uint16_t>(n), 0};
    ++long_count_;
  }
  ++count_;
}

// ---------------------------------------------------------------------------------------------------------------
// Encoder

Encoder::Encoder(const std::vector<uint32_t>& byte_ids, const uint32_t* merges, size_t count,
                 const Options& options, std::unordered_map<std::string, uint32_t> vocab,
                 std::vector<std::string> added, std::vector<uint32_t> prefix, std::vector<uint32_t> suffix,
                 size_t cache_entries)
    : options_(options),
      table_(class_table()),
      shift_(options.profile == Profile::kRegex ? 0 : 2),
      vocab_(std::move(vocab)),
      added_(std::move(added)),
      prefix_(std::move(prefix)),
      suffix_(std::move(suffix)),
      cache_entries_(cache_entries) {
  if (byte_ids.size() != 256)
    throw std::invalid_argument("byte_ids: expected 256 entries (one id per byte), got " +
                                std::to_string(byte_ids.size()));
  if (options.max_digits < 1) throw std::invalid_argument("max_digits must be >= 1");
  std::copy(byte_ids.begin(), byte_ids.end(), byte_ids_);
  pairs_.build(merges, count);
  int firsts = 0;
  for (auto& a : added_) {
    if (a.empty()) throw std::invalid_argument("added tokens must not be empty");
    const auto f = static_cast<uint8_t>(a[0]);
    firsts += !added_first_[f];
    added_first_[f] = true;
    single_first_ = f;
    added_lengths_.push_back(a.size());
  }
  if (firsts != 1) single_first_ = -1;
  std::sort(added_lengths_.begin(), added_lengths_.end());
  added_lengths_.erase(std::unique(added_lengths_.begin(), added_lengths_.end()), added_lengths_.end());
  for (const auto& a : added_) added_set_.insert(std::string_view(a));
}

Workspace* Encoder::acquire() {
  std::lock_guard<std::mutex> lock(pool_mutex_);
  if (!free_.empty()) {
    Workspace* ws = free_.back();
    free_.pop_back();
    return ws;
  }
  all_.push_back(std::make_unique<Workspace>(cache_entries_));
  return all_.back().get();
}

void Encoder::release(Workspace* ws) {
  std::lock_guard<std::mutex> lock(pool_mutex_);
  free_.push_back(ws);
}

// Class of the code point at s[i] under the profile, and its UTF-8 length. The text is valid UTF-8 (Python's own
// encoding of a str); a truncated sequence at the end reads as one "other" character.
inline uint8_t Encoder::cls(const uint8_t* s, size_t n, size_t i, size_t& len) const {
  const uint8_t b = s[i];
  if (b < 0x80) {
    len = 1;
    return (table_[b] >> shift_) & 3;
  }
  uint32_t cp;
  if (b < 0xE0) {
    len = 2;
    if (i + 2 > n) return len = n - i, kOther;
    cp = ((b & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
  } else if (b < 0xF0) {
    len = 3;
    if (i + 3 > n) return len = n - i, kOther;
    cp = ((b & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
  } else {
    len = 4;
    if (i + 4 > n) return len = n - i, kOther;
    cp = ((b & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) | (s[i + 3] & 0x3Fu);
    if (cp >= kMaxCodePoint) return kOther;
  }
  return (table_[cp] >> shift_) & 3;
}

// GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// The end of the pre-token starting at s[i], as the regex engine takes it: the first alternative that matches,
// runs greedy. The optional space is U+0020 only.
size_t Encoder::piece_end_gpt2(const uint8_t* s, size_t n, size_t i) const {
  const uint8_t b = s[i];
  if (b == '\'' && i + 1 < n) {  // contractions, lowercase only
    const uint8_t a = s[i + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
    if (i + 2 < n) {
      const uint8_t c = s[i + 2];
      if ((a == 'r' && c == 'e') || (a == 'v' && c == 'e') || (a == 'l' && c == 'l')) return i + 3;
    }
  }
  size_t l0, lk;
  const uint8_t c0 = cls(s, n, i, l0);
  size_t k = i;
  uint8_t ck = c0;
  lk = l0;
  if (b == ' ' && i + 1 < n) {  // " ?" before a letter, digit or other-symbol run
    size_t l1;
    const uint8_t c1 = cls(s, n, i + 1, l1);
    if (c1 != kSpace) k = i + 1, ck = c1, lk = l1;
  }
  size_t j = k + lk, lj;
  if (ck != kSpace) {
    while (j < n && cls(s, n, j, lj) == ck) j += lj;
    return j;
  }
  // \s+(?!\S): before a non-space, a run of two or more characters leaves its last one to the next pre-token (so
  // " word" keeps its space); a single whitespace character before a non-space is taken by the final \s+.
  size_t last = i, count = 1;
  while (j < n && cls(s, n, j, lj) == kSpace) last = j, j += lj, ++count;
  if (j < n && count >= 2) return last;
  return j;
}

// cl100k / Llama-3 / Qwen2 (D = max_digits):
// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
size_t Encoder::piece_end_cl100k(const uint8_t* s, size_t n, size_t i) const {
  const uint8_t b = s[i];
  if (b == '\'' && i + 1 < n) {  // contractions, any case; Oniguruma's case folding also reads U+017F (long s) as s
    const uint8_t a = s[i + 1] | 0x20;
    const bool letter = (s[i + 1] | 0x20) >= 'a' && (s[i + 1] | 0x20) <= 'z' && s[i + 1] >= 'A';
    if (letter && (a == 's' || a == 't' || a == 'm' || a == 'd')) return i + 2;
    if (s[i + 1] == 0xC5 && i + 2 < n && s[i + 2] == 0xBF) return i + 3;
    if (letter && i + 2 < n) {
      const uint8_t c = s[i + 2] | 0x20;
      const bool letter2 = c >= 'a' && c <= 'z' && s[i + 2] >= 'A';
      if (letter2 && ((a == 'r' && c == 'e') || (a == 'v' && c == 'e') || (a == 'l' && c == 'l'))) return i + 3;
    }
  }
  size_t l0, lj;
  const uint8_t c0 = cls(s, n, i, l0);
  size_t j = i + l0;
  if (c0 == kLetter) {  // \p{L}+ (the optional prefix matched nothing)
    while (j < n && cls(s, n, j, lj) == kLetter) j += lj;
    return j;
  }
  if (c0 != kDigit && !is_rn(b) && j < n && cls(s, n, j, lj) == kLetter) {  // [^\r\n\p{L}\p{N}]\p{L}+
    j += lj;
    while (j < n && cls(s, n, j, lj) == kLetter) j += lj;
    return j;
  }
  if (c0 == kDigit) {  // \p{N}{1,D}
    for (int count = 1; count < options_.max_digits && j < n && cls(s, n, j, lj) == kDigit; ++count) j += lj;
    return j;
  }
  size_t p = i;  // " ?[^\s\p{L}\p{N}]+[\r\n]*"
  uint8_t cp = c0;
  size_t lp = l0;
  if (b == ' ' && i + 1 < n) {
    size_t l1;
    if (cls(s, n, i + 1, l1) == kOther) p = i + 1, cp = kOther, lp = l1;
  }
  if (cp == kOther) {
    j = p + lp;
    while (j < n && cls(s, n, j, lj) == kOther) j += lj;
    while (j < n && is_rn(s[j])) ++j;
    return j;
  }
  // c0 is whitespace. \s*[\r\n]+: up to and including the run's last \r or \n. Else \s+(?!\S) | \s+ as in GPT-2.
  size_t last = i, count = 1, last_rn = is_rn(b) ? i : SIZE_MAX;
  while (j < n && cls(s, n, j, lj) == kSpace) {
    if (is_rn(s[j])) last_rn = j;
    last = j, j += lj, ++count;
  }
  if (last_rn != SIZE_MAX) return last_rn + 1;
  if (j < n && count >= 2) return last;
  return j;
}

void Encoder::pretokenize(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const size_t j = options_.pattern == Pattern::kGPT2 ? piece_end_gpt2(s, n, i) : piece_end_cl100k(s, n, i);
    out.emplace_back(i, j);
    i = j;
  }
}

bool Encoder::needs_nfc(std::string_view text) const {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) {  // skip ASCII eight bytes at a time
      uint64_t w;
      std::memcpy(&w, s + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    if (s[i] < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    const uint8_t b = s[i];
    uint32_t cp;
    if (b < 0xE0) {
      len = 2;
      cp = i + 2 <= n ? ((b & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu) : 0xFFFD;
    } else if (b < 0xF0) {
      len = 3;
      cp = i + 3 <= n ? ((b & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu) : 0xFFFD;
    } else {
      len = 4;
      cp = i + 4 <= n ? ((b & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) |
                            (s[i + 3] & 0x3Fu)
                      : 0xFFFD;
    }
    if (cp >= kMaxCodePoint || (table_[cp] & kNfcBit)) return true;
    i += len;
  }
  return false;
}

bool Encoder::contains_added(std::string_view text) const {
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n; ++i) {
    if (single_first_ >= 0) {  // one distinct first byte (e.g. '<' of "<|...|>"): memchr to the next candidate
      const void* hit = std::memchr(s + i, single_first_, n - i);
      if (hit == nullptr) return false;
      i = static_cast<const uint8_t*>(hit) - s;
    } else if (!added_first_[s[i]]) {
      continue;
    }
    for (size_t len : added_lengths_) {
      if (len > n - i) break;  // lengths ascending
      if (added_set_.count(std::string_view(reinterpret_cast<const char*>(s + i), len))) return true;
    }
  }
  return false;
}

// GPT-2 order: take the best (lowest) rank r among adjacent pairs and merge its occurrences left to right, then
// the next best rank. HF order: merge the single leftmost occurrence of the lowest rank, then look again. Both are
// written here as one merge at a time: GPT-2 keeps merging pairs of the round's rank r while any is left (a merge
// never creates another pair of rank r, since the merged token differs from both parts), HF always takes the
// lowest; they differ only when a merge creates a pair ranked below r.
void Encoder::merge_linear(const uint8_t* p, size_t n, IdBuf& out, Workspace& ws) const {
  auto& parts = ws.parts;
  auto& rank = ws.ranks;
  parts.resize(n);
  rank.resize(n - 1);
  for (size_t i = 0; i < n; ++i) parts[i] = byte_ids_[p[i]];
  for (size_t i = 0; i + 1 < n; ++i) rank[i] = pairs_.find(parts[i], parts[i + 1]);
  size_t m = n;
  uint64_t round = PairTable::kNone;
  const bool gpt2 = options_.order == MergeOrder::kGPT2;
  while (m > 1) {
    size_t at = SIZE_MAX;
    if (gpt2 && round != PairTable::kNone) {
      for (size_t i = 0; i + 1 < m; ++i)
        if (rank[i] == round) {
          at = i;
          break;
        }
    }
    if (at == SIZE_MAX) {
      uint64_t best = PairTable::kNone;
      for (size_t i = 0; i + 1 < m; ++i)
        if (rank[i] < best) best = rank[i], at = i;
      if (best == PairTable::kNone) break;
      round = best;
    }
    parts[at] = static_cast<uint32_t>(rank[at]);  // the merged id is the low half of (rank << 32 | id)
    for (size_t i = at + 1; i + 1 < m; ++i) parts[i] = parts[i + 1];
    for (size_t i = at; i + 2 < m; ++i) rank[i] = rank[i + 1];
    --m;
    if (at > 0) rank[at - 1] = pairs_.find(parts[at - 1], parts[at]);
    if (at + 1 < m) rank[at] = pairs_.find(parts[at], parts[at + 1]);
  }
  out.append(parts.data(), m);
}

// The same two orders for long pre-tokens, on a doubly linked list of parts and a min-heap of (rank, position)
// (ties: leftmost first, as HF's heap). Stale heap entries are skipped by checking that the pair at their position
// still has their rank. GPT-2 order pops every entry of the round's rank before pushing the pairs the round
// created; HF order pushes them at once.
void Encoder::merge_heap(const uint8_t* p, size_t n, IdBuf& out, Workspace& ws) const {
  auto& parts = ws.parts;
  auto& prev = ws.prev;
  auto& next = ws.next;
  auto& heap = ws.heap;
  auto& round = ws.round;
  parts.resize(n);
  prev.resize(n);
  next.resize(n);
  heap.clear();
  for (size_t i = 0; i < n; ++i) {
    parts[i] = byte_ids_[p[i]];
    prev[i] = static_cast<int32_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int32_t>(i + 1) : -1;
  }
  auto cmp = [](const std::pair<uint64_t, uint32_t>& a, const std::pair<uint64_t, uint32_t>& b) { return a > b; };
  for (size_t i = 0; i + 1 < n; ++i) {
    const uint64_t r = pairs_.find(parts[i], parts[i + 1]);
    if (r != PairTable::kNone) heap.emplace_back(r, static_cast<uint32_t>(i));
  }
  std::make_heap(heap.begin(), heap.end(), cmp);
  auto valid = [&](uint64_t r, uint32_t at) {
    return parts[at] != UINT32_MAX && next[at] >= 0 && pairs_.find(parts[at], parts[next[at]]) == r;
  };
  auto merge_at = [&](uint32_t at, std::vector<std::pair<uint64_t, uint32_t>>* created) {
    const uint64_t r = pairs_.find(parts[at], parts[next[at]]);
    const int32_t gone = next[at];
    parts[at] = static_cast<uint32_t>(r);
    parts[gone] = UINT32_MAX;
    next[at] = next[gone];
    if (next[at] >= 0) prev[next[at]] = static_cast<int32_t>(at);
    auto push = [&](int32_t left) {
      const uint64_t nr = pairs_.find(parts[left], parts[next[left]]);
      if (nr == PairTable::kNone) return;
      if (created) {
        created->emplace_back(nr, static_cast<uint32_t>(left));
      } else {
        heap.emplace_back(nr, static_cast<uint32_t>(left));
        std::push_heap(heap.begin(), heap.end(), cmp);
      }
    };
    if (prev[at] >= 0) push(prev[at]);
    if (next[at] >= 0) push(static_cast<int32_t>(at));
  };
  const bool gpt2 = options_.order == MergeOrder::kGPT2;
  std::vector<std::pair<uint64_t, uint32_t>> created;
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), cmp);
    const auto [r, at] = heap.back();
    heap.pop_back();
    if (!valid(r, at)) continue;
    if (!gpt2) {
      merge_at(at, nullptr);
      continue;
    }
    round.clear();
    round.emplace_back(r, at);
    while (!heap.empty() && heap.front().first == r) {  // every entry of this rank, in position order
      std::pop_heap(heap.begin(), heap.end(), cmp);
      round.push_back(heap.back());
      heap.pop_back();
    }
    created.clear();
    for (const auto& [rr, pos] : round)
      if (valid(rr, pos)) merge_at(pos, &created);
    for (const auto& c : created) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end(), cmp);
    }
  }
  out.ensure(n);
  for (int32_t i = 0; i >= 0; i = next[i]) out.push_unchecked(parts[i]);
}

void Encoder::merge(const uint8_t* p, size_t n, IdBuf& out, Workspace& ws, int algorithm) const {
  if (n == 0) return;
  if (n == 1) {
    out.push(byte_ids_[p[0]]);
    return;
  }
  if (options_.ignore_merges && !vocab_.empty()) {
    auto it = vocab_.find(std::string(reinterpret_cast<const char*>(p), n));
    if (it != vocab_.end()) {
      out.push(it->second);
      return;
    }
  }
  if (algorithm == 1 || (algorithm == 0 && n <= kLinearMax))
    merge_linear(p, n, out, ws);
  else
    merge_heap(p, n, out, ws);
}

// The common pre-tokens, a run of letters starting with an ASCII one (after one space), are cut here without the
// general scanners: for both patterns, " ?" + letters is the whole pre-token up to the first character that is not
// a letter. Contractions start with "'" and never take this path. `out` has room for every id (at most one per
// byte).
template <Pattern P>
void Encoder::encode_pieces(const uint8_t* s, size_t n, IdBuf& out, Workspace& ws) const {
  const uint8_t* end = s + n;
  const bool cached = use_cache;
  uint64_t hits = 0, misses = 0;  // counted here, not in ws: one memory update per text, not per pre-token
  for (size_t i = 0; i < n;) {
    size_t j;
    bool non_ascii;
    if (ascii_word(s, n, i, &j, &non_ascii)) {
      while (non_ascii) {  // the run goes on through non-ASCII letters (é, ß, ...)
        size_t lj;
        if (cls(s, n, j, lj) != kLetter) break;
        j = ascii_letter_run(s, n, j + lj, &non_ascii);
      }
    } else {
      j = P == Pattern::kGPT2 ? piece_end_gpt2(s, n, i) : piece_end_cl100k(s, n, i);
    }
    const uint8_t* p = s + i;
    const size_t len = j - i;
    i = j;
    if (len == 1) {  // one byte is one token: no lookup
      out.push_unchecked(byte_ids_[*p]);
      continue;
    }
    if (!cached || len > kMaxCachedPiece) {
      merge(p, len, out, ws);
      continue;
    }
    if (ws.cache.lookup(p, len, end, out)) {
      ++hits;
      continue;
    }
    ++misses;
    const size_t start = out.size();
    merge(p, len, out, ws);
    ws.cache.insert(p, len, end, out.data() + start, out.size() - start);
  }
  ws.hits += hits;
  ws.misses += misses;
}

int64_t Encoder::encode(std::string_view text, IdBuf& out, Workspace& ws, bool check_nfc) const {
  if (!added_.empty() && contains_added(text)) return kAddedToken;
  if (check_nfc && options_.nfc_check && needs_nfc(text)) return kNeedsNFC;
  const auto* s = reinterpret_cast<const uint8_t*>(text.data());
  const size_t start = out.size();
  out.ensure(text.size() + prefix_.size() + suffix_.size());  // at most one id per byte: pushes need no checks
  if (!prefix_.empty()) out.append(prefix_.data(), prefix_.size());
  if (options_.pattern == Pattern::kGPT2)
    encode_pieces<Pattern::kGPT2>(s, text.size(), out, ws);
  else
    encode_pieces<Pattern::kCL100K>(s, text.size(), out, ws);
  if (!suffix_.empty()) out.append(suffix_.data(), suffix_.size());
  return static_cast<int64_t>(out.size() - start);
}

}  // namespace omni_mega::bpe
