// JSON Lines parser for preprocessing blocks; see jsonl.h. Grammar as Python's json module reads it (RFC 8259 plus
// NaN/Infinity, which go to the fallback here): whitespace is space, \t, \n, \r; strings may not hold raw control
// characters (json.loads is strict by default); numbers -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][-+]?[0-9]+)?.
#include "bpe/jsonl.h"

#include <algorithm>
#include <cstring>

namespace omni_mega::bpe {
namespace {

constexpr int kMaxDepth = 64;  // deeper nesting goes to Python (whose own limit is its recursion limit)

inline int hex(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

inline void put_utf8(uint32_t cp, std::string* out) {
  if (out == nullptr) return;
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace

std::vector<std::pair<size_t, size_t>> split_lines(std::string_view block) {
  std::vector<std::pair<size_t, size_t>> lines;
  size_t start = 0;
  while (start < block.size()) {
    const void* nl = std::memchr(block.data() + start, '\n', block.size() - start);
    const size_t end = nl ? static_cast<const char*>(nl) - block.data() : block.size();
    lines.emplace_back(start, end);
    start = end + 1;  // after a final '\n' the loop ends: no empty last line
    if (!nl) break;
  }
  return lines;
}

bool JsonLine::ws() {
  while (p_ < e_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  return p_ < e_;
}

// One UTF-8 sequence at p_ as Python's strict decoder accepts it (no overlong forms, no surrogates, <= U+10FFFF).
bool JsonLine::utf8(std::string* out) {
  const uint8_t b = *p_;
  size_t n;
  uint32_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b >= 0xC2 && b <= 0xDF) {
    n = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    n = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;  // U+D800..U+DFFF are not UTF-8
  } else if (b >= 0xF0 && b <= 0xF4) {
    n = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return false;
  }
  if (e_ - p_ < static_cast<ptrdiff_t>(n) || p_[1] < lo || p_[1] > hi) return false;
  for (size_t i = 2; i < n; ++i)
    if ((p_[i] & 0xC0) != 0x80) return false;
  if (out) out->append(reinterpret_cast<const char*>(p_), n);
  p_ += n;
  return true;
}

// A string at p_ (the opening quote); decoded into *out when out is not null.
bool JsonLine::string(std::string* out) {
  if (p_ >= e_ || *p_ != '"') return false;
  ++p_;
  if (out) out->clear();
  while (p_ < e_) {
    const uint8_t* run = p_;  // plain printable ASCII, copied in one go
    while (p_ < e_ && *p_ >= 0x20 && *p_ < 0x80 && *p_ != '"' && *p_ != '\\') ++p_;
    if (out && p_ > run) out->append(reinterpret_cast<const char*>(run), p_ - run);
    if (p_ >= e_) return false;
    const uint8_t c = *p_;
    if (c == '"') {
      ++p_;
      return true;
    }
    if (c < 0x20) return false;  // a raw control character: json.loads (strict) rejects it
    if (c >= 0x80) {
      if (!utf8(out)) return false;
      continue;
    }
    // A backslash escape.
    if (e_ - p_ < 2) return false;
    const uint8_t x = p_[1];
    p_ += 2;
    char simple = 0;
    switch (x) {
      case '"': simple = '"'; break;
      case '\\': simple = '\\'; break;
      case '/': simple = '/'; break;
      case 'b': simple = '\b'; break;
      case 'f': simple = '\f'; break;
      case 'n': simple = '\n'; break;
      case 'r': simple = '\r'; break;
      case 't': simple = '\t'; break;
      case 'u': break;
      default: return false;
    }
    if (simple) {
      if (out) out->push_back(simple);
      continue;
    }
    auto read4 = [&](uint32_t& v) {
      if (e_ - p_ < 4) return false;
      v = 0;
      for (int i = 0; i < 4; ++i) {
        const int h = hex(p_[i]);
        if (h < 0) return false;
        v = v << 4 | static_cast<uint32_t>(h);
      }
      p_ += 4;
      return true;
    };
    uint32_t cp;
    if (!read4(cp)) return false;
    if (cp >= 0xDC00 && cp <= 0xDFFF) return false;  // a lone low surrogate: Python keeps it; not UTF-8 text
    if (cp >= 0xD800 && cp <= 0xDBFF) {              // a pair, as Python's decoder combines them
      uint32_t low;
      if (e_ - p_ < 6 || p_[0] != '\\' || p_[1] != 'u') return false;
      p_ += 2;
      if (!read4(low) || low < 0xDC00 || low > 0xDFFF) return false;
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    put_utf8(cp, out);
  }
  return false;
}

bool JsonLine::number() {
  if (p_ < e_ && *p_ == '-') ++p_;
  if (p_ >= e_) return false;
  if (*p_ == '0') {
    ++p_;
  } else if (*p_ >= '1' && *p_ <= '9') {
    while (p_ < e_ && *p_ >= '0' && *p_ <= '9') ++p_;
  } else {
    return false;  // NaN, Infinity, -Infinity: Python's extensions, left to Python
  }
  if (p_ < e_ && *p_ == '.') {
    ++p_;
    if (p_ >= e_ || *p_ < '0' || *p_ > '9') return false;
    while (p_ < e_ && *p_ >= '0' && *p_ <= '9') ++p_;
  }
  if (p_ < e_ && (*p_ == 'e' || *p_ == 'E')) {
    ++p_;
    if (p_ < e_ && (*p_ == '+' || *p_ == '-')) ++p_;
    if (p_ >= e_ || *p_ < '0' || *p_ > '9') return false;
    while (p_ < e_ && *p_ >= '0' && *p_ <= '9') ++p_;
  }
  return true;
}

bool JsonLine::literal(const char* word, size_t n) {
  if (static_cast<size_t>(e_ - p_) < n || std::memcmp(p_, word, n) != 0) return false;
  p_ += n;
  return true;
}

// Any value, validated and skipped.
bool JsonLine::skip_value(int depth) {
  if (!ws()) return false;
  switch (*p_) {
    case '"': return string(nullptr);
    case 't': return literal("true", 4);
    case 'f': return literal("false", 5);
    case 'n': return literal("null", 4);
    case '[': {
      if (depth >= kMaxDepth) return false;
      ++p_;
      if (!ws()) return false;
      if (*p_ == ']') return ++p_, true;
      while (true) {
        if (!skip_value(depth + 1) || !ws()) return false;
        if (*p_ == ']') return ++p_, true;
        if (*p_ != ',') return false;
        ++p_;
      }
    }
    case '{': {
      if (depth >= kMaxDepth) return false;
      ++p_;
      if (!ws()) return false;
      if (*p_ == '}') return ++p_, true;
      while (true) {
        if (!ws() || !string(nullptr) || !ws() || *p_ != ':') return false;
        ++p_;
        if (!skip_value(depth + 1) || !ws()) return false;
        if (*p_ == '}') return ++p_, true;
        if (*p_ != ',') return false;
        ++p_;
      }
    }
    default: return number();
  }
}

bool JsonLine::parse(std::string_view line) {
  p_ = reinterpret_cast<const uint8_t*>(line.data());
  e_ = p_ + line.size();
  std::fill(found_.begin(), found_.end(), false);
  if (!ws() || *p_ != '{') return false;
  ++p_;
  if (!ws() || *p_ == '}') return false;  // {}: no keys (Python reports the missing key)
  while (true) {
    if (!ws() || !string(&key_) || !ws() || *p_ != ':') return false;
    ++p_;
    size_t k = 0;
    while (k < keys_.size() && keys_[k] != key_) ++k;
    if (k < keys_.size()) {
      if (found_[k] || !ws() || *p_ != '"' || !string(&values_[k])) return false;  // a repeat, or not a string
      found_[k] = true;
    } else if (!skip_value(1)) {
      return false;
    }
    if (!ws()) return false;
    if (*p_ == '}') {
      ++p_;
      break;
    }
    if (*p_ != ',') return false;
    ++p_;
  }
  ws();
  if (p_ != e_) return false;  // extra data after the object
  for (bool f : found_)
    if (!f) return false;
  return true;
}

}  // namespace omni_mega::bpe
