// JSON Lines -> the string values of chosen keys, for tools/preprocess_data.py's blocks (CPU, no Python objects).
//
// Sound, not complete: a line this parser accepts yields exactly what Python's json.loads gives for it (an object
// whose chosen keys each hold a string, decoded to UTF-8); anything else it reports as a fallback, and Python
// parses that line and decides (malformed JSON, a missing key, a list of sentences, NaN, a lone surrogate, invalid
// UTF-8, duplicate keys, nesting deeper than 64, ...). So the bad-line accounting stays Python's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace omni_mega::bpe {

class JsonLine {
 public:
  explicit JsonLine(const std::vector<std::string>& keys) : keys_(keys), values_(keys.size()), found_(keys.size()) {}
  // Parses one line (no '\n'); true when every key holds a string: value(k) is its UTF-8 text.
  bool parse(std::string_view line);
  std::string_view value(size_t k) const { return values_[k]; }

 private:
  bool ws();
  bool string(std::string* out);
  bool skip_value(int depth);
  bool number();
  bool literal(const char* word, size_t n);
  bool utf8(std::string* out);

  const std::vector<std::string>& keys_;
  std::vector<std::string> values_;
  std::vector<bool> found_;
  std::string key_;
  const uint8_t* p_ = nullptr;
  const uint8_t* e_ = nullptr;
};

// The lines of a block: [begin, end) byte offsets, split at '\n' as Python's str.split("\n") (a final line without
// '\n' counts; the empty piece after a final '\n' does not).
std::vector<std::pair<size_t, size_t>> split_lines(std::string_view block);

}  // namespace omni_mega::bpe
