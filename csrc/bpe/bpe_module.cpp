// omni_mega._bpe: the Python binding of GPT2Encoder (pybind11; strings do not fit a torch op schema well, and the
// encoder holds state: its merge table and pre-token cache). omni_mega/data/bpe.py is the only caller.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "bpe/gpt2_bpe.h"

namespace py = pybind11;
using omni_mega::bpe::GPT2Encoder;

namespace {

// texts: list[str] -> (ids: bytes of uint32 [sum of lengths], lengths: bytes of int64 [len(texts)]). A text with a
// non-ASCII code point or a pre-token longer than kMaxPiece bytes gets length -1 and no ids (the caller encodes it
// another way). One call per batch of texts;
// the GIL is released while encoding (the views stay valid: the list holds the immutable strings).
py::tuple encode_batch(GPT2Encoder& enc, const py::list& texts) {
  const size_t n = texts.size();
  std::vector<std::string_view> views(n);
  std::vector<int64_t> lengths(n, -1);
  for (size_t i = 0; i < n; ++i) {
    PyObject* obj = texts[i].ptr();
    if (!PyUnicode_Check(obj))
      throw py::type_error("texts[" + std::to_string(i) + "]: expected str, got " +
                           std::string(Py_TYPE(obj)->tp_name));
    if (!PyUnicode_IS_ASCII(obj)) continue;
    // A compact ASCII str stores its characters as UTF-8 already: this is a pointer, not a copy.
    Py_ssize_t size = 0;
    const char* data = PyUnicode_AsUTF8AndSize(obj, &size);
    if (data == nullptr) throw py::error_already_set();
    views[i] = std::string_view(data, static_cast<size_t>(size));
    lengths[i] = 0;
  }
  std::vector<uint32_t> ids;
  {
    py::gil_scoped_release release;
    std::lock_guard<std::mutex> lock(enc.mutex());
    size_t total = 0;
    for (const auto& v : views) total += v.size();
    ids.reserve(total / 3 + 16);  // ~4 bytes per token on English
    for (size_t i = 0; i < n; ++i) {
      if (lengths[i] < 0) continue;
      const size_t before = ids.size();
      lengths[i] = enc.encode_ascii(views[i], ids) ? static_cast<int64_t>(ids.size() - before) : -1;
    }
  }
  return py::make_tuple(py::bytes(reinterpret_cast<const char*>(ids.data()), ids.size() * sizeof(uint32_t)),
                        py::bytes(reinterpret_cast<const char*>(lengths.data()), n * sizeof(int64_t)));
}

}  // namespace

PYBIND11_MODULE(_bpe, m) {
  m.doc() = "GPT-2 byte-level BPE for ASCII text in C++ (see csrc/bpe/gpt2_bpe.h)";
  py::class_<GPT2Encoder>(m, "GPT2Encoder")
      .def(py::init<const std::vector<uint32_t>&, const std::vector<std::array<uint32_t, 3>>&, size_t>(),
           py::arg("byte_ids"), py::arg("merges"), py::arg("max_cache_entries") = size_t(1) << 20,
           "byte_ids: 256 ids of the one-byte tokens; merges: (left id, right id, merged id) in priority order")
      .def("encode_batch", &encode_batch, py::arg("texts"))
      .def(
          "merge_piece",
          [](const GPT2Encoder& enc, const py::bytes& piece) {
            std::vector<uint32_t> out;
            enc.merge_piece(std::string_view(piece), out);
            return out;
          },
          py::arg("piece"), "BPE ids of one pre-token's bytes, without the cache (for tests)")
      .def_readwrite("use_cache", &GPT2Encoder::use_cache)
      .def_readonly("cache_hits", &GPT2Encoder::hits)
      .def_readonly("cache_misses", &GPT2Encoder::misses)
      .def_property_readonly("cache_size", [](const GPT2Encoder& enc) { return enc.cache.size(); })
      .def("clear_cache", [](GPT2Encoder& enc) {
        std::lock_guard<std::mutex> lock(enc.mutex());
        enc.cache.clear();
      });
}
