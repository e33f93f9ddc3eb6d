// omni_mega._bpe: the Python binding of the byte-level BPE encoder (pybind11; strings do not fit a torch op schema
// well, and the encoder holds state: its merge table and per-thread pre-token caches). omni_mega/data/text/bpe.py
// is the only caller.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <thread>

#include "bpe/bytelevel_bpe.h"
#include "bpe/jsonl.h"

namespace py = pybind11;
using omni_mega::bpe::Encoder;
using omni_mega::bpe::IdBuf;
using omni_mega::bpe::Workspace;

namespace {

// A numpy array that owns a malloc'ed block (no copy of the ids).
template <class T>
py::array_t<T> owned_array(T* data, size_t n) {
  if (data == nullptr) return py::array_t<T>(0);
  py::capsule owner(data, [](void* p) { std::free(p); });
  return py::array_t<T>({static_cast<py::ssize_t>(n)}, {static_cast<py::ssize_t>(sizeof(T))}, data, owner);
}

struct WorkspaceLease {
  Encoder& enc;
  Workspace* ws;
  explicit WorkspaceLease(Encoder& e) : enc(e), ws(e.acquire()) {}
  ~WorkspaceLease() { enc.release(ws); }
};

void encode_range(Encoder& enc, const std::vector<std::string_view>& views, std::vector<int64_t>& lengths,
                  size_t begin, size_t end, IdBuf& out, bool check_nfc) {
  WorkspaceLease lease(enc);
  size_t bytes = 0;
  for (size_t i = begin; i < end; ++i) bytes += views[i].size();
  out.reserve(bytes / 3 + 16);  // ~4 bytes per token on English; grows when needed
  for (size_t i = begin; i < end; ++i)
    if (lengths[i] >= 0) lengths[i] = enc.encode(views[i], out, *lease.ws, check_nfc);
}

// texts: list[str] -> (ids uint32 [sum of lengths >= 0], lengths int64 [len(texts)]). lengths[i] < 0 marks a text
// with no ids: -1 not encodable as UTF-8 (a lone surrogate), -2 contains an added token the reference would match,
// -3 may change under NFC (the caller handles those; check_nfc = false when it passes normalized texts).
// `threads` > 1 splits the batch into that many contiguous ranges of about equal bytes, encoded concurrently; the
// result is the same for any number of threads (the caches never change ids). The GIL is released while encoding;
// the views stay valid because the list holds the strings and their UTF-8 buffers (cached on the str objects).
py::tuple encode_batch(Encoder& enc, const py::list& texts, int threads, bool check_nfc) {
  const size_t n = texts.size();
  std::vector<std::string_view> views(n);
  std::vector<int64_t> lengths(n, 0);
  size_t total = 0;
  for (size_t i = 0; i < n; ++i) {
    PyObject* obj = texts[i].ptr();
    if (!PyUnicode_Check(obj))
      throw py::type_error("texts[" + std::to_string(i) + "]: expected str, got " +
                           std::string(Py_TYPE(obj)->tp_name));
    Py_ssize_t size = 0;
    // An ASCII str stores its characters as UTF-8 already (a pointer, not a copy); others encode once.
    const char* data = PyUnicode_AsUTF8AndSize(obj, &size);
    if (data == nullptr) {  // a lone surrogate: not UTF-8
      PyErr_Clear();
      lengths[i] = -1;
      continue;
    }
    views[i] = std::string_view(data, static_cast<size_t>(size));
    total += static_cast<size_t>(size);
  }
  const size_t nthreads = std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(std::max(threads, 1)), n));
  std::vector<IdBuf> outs(nthreads);
  {
    py::gil_scoped_release release;
    if (nthreads == 1) {
      encode_range(enc, views, lengths, 0, n, outs[0], check_nfc);
    } else {
      std::vector<size_t> bounds(nthreads + 1, n);
      bounds[0] = 0;
      size_t acc = 0, t = 1;
      for (size_t i = 0; i < n && t < nthreads; ++i) {
        acc += views[i].size();
        if (acc * nthreads >= total * t) bounds[t++] = i + 1;
      }
      std::vector<std::thread> pool;
      std::exception_ptr error;
      std::mutex error_mutex;
      for (size_t k = 0; k < nthreads; ++k)
        pool.emplace_back([&, k] {
          try {
            encode_range(enc, views, lengths, bounds[k], bounds[k + 1], outs[k], check_nfc);
          } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            error = std::current_exception();
          }
        });
      for (auto& th : pool) th.join();
      if (error) std::rethrow_exception(error);
      for (size_t k = 1; k < nthreads; ++k) outs[0].append(outs[k].data(), outs[k].size());
    }
  }
  const size_t nids = outs[0].size();
  auto* lens = static_cast<int64_t*>(std::malloc(std::max<size_t>(n, 1) * sizeof(int64_t)));
  if (lens == nullptr) throw std::bad_alloc();
  std::copy(lengths.begin(), lengths.end(), lens);
  return py::make_tuple(owned_array<uint32_t>(outs[0].release(), nids), owned_array<int64_t>(lens, n));
}

// block: whole JSON lines -> (status int8 [lines]: 0 parsed and encoded here, 1 left to the caller (see jsonl.h:
// anything json.loads might read differently, and texts the encoder hands back); per key, (ids uint32, lengths
// int64 [lines with status 0]) of that key's string). One call per preprocessing block, the GIL released
// throughout: the JSON parsing runs in parallel on the caller's threads too.
py::tuple encode_jsonl(Encoder& enc, const py::bytes& block, const std::vector<std::string>& keys) {
  const std::string_view data(block);
  const size_t nkeys = keys.size();
  std::vector<int8_t> status;
  std::vector<IdBuf> ids(nkeys);
  std::vector<std::vector<int64_t>> lens(nkeys);
  {
    py::gil_scoped_release release;
    WorkspaceLease lease(enc);
    omni_mega::bpe::JsonLine parser(keys);
    const auto lines = omni_mega::bpe::split_lines(data);
    status.assign(lines.size(), 1);
    for (auto& b : ids) b.reserve(data.size() / 3 / std::max<size_t>(nkeys, 1) + 16);
    std::vector<size_t> before(nkeys);
    for (size_t l = 0; l < lines.size(); ++l) {
      if (!parser.parse(data.substr(lines[l].first, lines[l].second - lines[l].first))) continue;
      bool ok = true;
      size_t k = 0;
      for (; k < nkeys && ok; ++k) {
        before[k] = ids[k].size();
        const int64_t n = enc.encode(parser.value(k), ids[k], *lease.ws);
        if (n < 0)
          ok = false;
        else
          lens[k].push_back(n);
      }
      if (!ok) {  // undo the keys done for this line; the caller encodes it
        for (size_t j = 0; j < k; ++j) {
          ids[j].resize_down(before[j]);
          if (j + 1 < k) lens[j].pop_back();
        }
        continue;
      }
      status[l] = 0;
    }
  }
  py::list per_key;
  for (size_t k = 0; k < nkeys; ++k) {
    const size_t n = ids[k].size(), m = lens[k].size();
    auto* l = static_cast<int64_t*>(std::malloc(std::max<size_t>(m, 1) * sizeof(int64_t)));
    if (l == nullptr) throw std::bad_alloc();
    std::copy(lens[k].begin(), lens[k].end(), l);
    per_key.append(py::make_tuple(owned_array<uint32_t>(ids[k].release(), n), owned_array<int64_t>(l, m)));
  }
  auto* st = static_cast<int8_t*>(std::malloc(std::max<size_t>(status.size(), 1)));
  if (st == nullptr) throw std::bad_alloc();
  std::copy(status.begin(), status.end(), st);
  return py::make_tuple(owned_array<int8_t>(st, status.size()), per_key);
}

omni_mega::bpe::Options parse_options(const std::string& pattern, int max_digits, const std::string& profile,
                                      const std::string& merge_order, bool ignore_merges, bool nfc_check) {
  using namespace omni_mega::bpe;
  Options o;
  if (pattern == "gpt2")
    o.pattern = Pattern::kGPT2;
  else if (pattern == "cl100k")
    o.pattern = Pattern::kCL100K;
  else
    throw py::value_error("pattern must be 'gpt2' or 'cl100k', got '" + pattern + "'");
  if (profile == "regex")
    o.profile = Profile::kRegex;
  else if (profile == "hf")
    o.profile = Profile::kHF;
  else
    throw py::value_error("profile must be 'regex' or 'hf', got '" + profile + "'");
  if (merge_order == "gpt2")
    o.order = MergeOrder::kGPT2;
  else if (merge_order == "hf")
    o.order = MergeOrder::kHF;
  else
    throw py::value_error("merge_order must be 'gpt2' or 'hf', got '" + merge_order + "'");
  o.max_digits = max_digits;
  o.ignore_merges = ignore_merges;
  o.nfc_check = nfc_check;
  return o;
}

}  // namespace

PYBIND11_MODULE(_bpe, m) {
  m.doc() = "Byte-level BPE (GPT-2 files, HF tokenizer.json) in C++, see csrc/bpe/bytelevel_bpe.h";
  py::class_<Encoder>(m, "ByteLevelBPE")
      .def(py::init([](const std::vector<uint32_t>& byte_ids, const py::bytes& merges, const std::string& pattern,
                       int max_digits, const std::string& profile, const std::string& merge_order,
                       const std::vector<std::pair<py::bytes, uint32_t>>& vocab, bool ignore_merges, bool nfc_check,
                       const std::vector<py::bytes>& added, const std::vector<uint32_t>& prefix,
                       const std::vector<uint32_t>& suffix, size_t cache_entries) {
             const std::string_view triples(merges);
             if (triples.size() % 12 != 0) throw py::value_error("merges: expected uint32 (left, right, merged)");
             std::unordered_map<std::string, uint32_t> v;
             v.reserve(vocab.size());
             for (const auto& [token, id] : vocab) v.emplace(std::string(token), id);
             std::vector<std::string> a;
             for (const auto& s : added) a.emplace_back(s);
             return std::make_unique<Encoder>(
                 byte_ids, reinterpret_cast<const uint32_t*>(triples.data()), triples.size() / 12,
                 parse_options(pattern, max_digits, profile, merge_order, ignore_merges, nfc_check), std::move(v),
                 std::move(a), prefix, suffix, cache_entries);
           }),
           py::arg("byte_ids"), py::arg("merges"), py::arg("pattern") = "gpt2", py::arg("max_digits") = 3,
           py::arg("profile") = "regex", py::arg("merge_order") = "gpt2",
           py::arg("vocab") = std::vector<std::pair<py::bytes, uint32_t>>{}, py::arg("ignore_merges") = false,
           py::arg("nfc_check") = false, py::arg("added") = std::vector<py::bytes>{},
           py::arg("prefix") = std::vector<uint32_t>{}, py::arg("suffix") = std::vector<uint32_t>{},
           py::arg("cache_entries") = size_t(1) << 20,
           "byte_ids: 256 ids of the one-byte tokens; merges: bytes of uint32 (left id, right id, merged id) in "
           "priority order; vocab: (token bytes, id) for ignore_merges; added: added-token contents to detect; "
           "prefix/suffix: ids around every text")
      .def("encode_batch", &encode_batch, py::arg("texts"), py::arg("threads") = 1, py::arg("check_nfc") = true)
      .def("encode_jsonl", &encode_jsonl, py::arg("block"), py::arg("keys"))
      .def(
          "pretokenize",
          [](const Encoder& enc, const std::string& text) {
            std::vector<std::pair<size_t, size_t>> spans;
            enc.pretokenize(text, spans);
            py::list out;
            for (auto [a, b] : spans) out.append(py::bytes(text.data() + a, b - a));
            return out;
          },
          py::arg("text"), "the pre-tokens of UTF-8 text (str is encoded), as bytes")
      .def(
          "merge_piece",
          [](Encoder& enc, const py::bytes& piece, int algorithm) {
            const std::string_view p(piece);
            IdBuf out;
            Workspace ws(0);
            enc.merge(reinterpret_cast<const uint8_t*>(p.data()), p.size(), out, ws, algorithm);
            return std::vector<uint32_t>(out.data(), out.data() + out.size());
          },
          py::arg("piece"), py::arg("algorithm") = 0,
          "BPE ids of one pre-token's bytes, without the cache; algorithm 0 auto, 1 linear scan, 2 heap (tests)")
      .def("needs_nfc", [](const Encoder& enc, const std::string& t) { return enc.needs_nfc(t); })
      .def("contains_added", [](const Encoder& enc, const std::string& t) { return enc.contains_added(t); })
      .def_readwrite("use_cache", &Encoder::use_cache)
      .def_property_readonly("cache_hits",
                             [](Encoder& enc) {
                               uint64_t s = 0;
                               enc.for_each_workspace([&](Workspace& ws) { s += ws.hits; });
                               return s;
                             })
      .def_property_readonly("cache_misses",
                             [](Encoder& enc) {
                               uint64_t s = 0;
                               enc.for_each_workspace([&](Workspace& ws) { s += ws.misses; });
                               return s;
                             })
      .def_property_readonly("cache_size",
                             [](Encoder& enc) {
                               size_t s = 0;
                               enc.for_each_workspace([&](Workspace& ws) { s = std::max(s, ws.cache.size()); });
                               return s;
                             })
      .def("clear_cache", [](Encoder& enc) { enc.for_each_workspace([](Workspace& ws) { ws.cache.clear(); }); });
}
