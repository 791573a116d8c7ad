#include "lesionflow/tokenizer.h"

#include <dlfcn.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>

#include "lesionflow/io.h"
#include "lesionflow/scratch.h"

namespace lf {
namespace {

struct Shim {
  void* lib = nullptr;
  int (*train)(const char*, char*, int) = nullptr;
  void* (*load_bytes)(const char*, int, char*, int) = nullptr;
  void (*free_)(void*) = nullptr;
  int (*encode)(void*, const char*, int*, int) = nullptr;
  int (*decode)(void*, const int*, int, char*, int) = nullptr;
  int (*vocab)(void*) = nullptr;
  int (*special)(void*, int) = nullptr;
  std::string error;
};

std::string exe_dir() {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  return n > 0 ? std::filesystem::path(std::string(buf, n)).parent_path().string() : ".";
}

const Shim& shim() {
  static Shim s;
  static std::once_flag once;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* e = std::getenv("LESIONFLOW_SPM_SHIM")) candidates.push_back(e);
    candidates.push_back(exe_dir() + "/liblesionflow_spm.so");
    candidates.push_back(LF_SPM_SHIM);
    for (const auto& c : candidates) {
      if (!file_exists(c)) continue;
      // Own link-map namespace: its protobuf 3.14 never meets libtorch's 3.21.
      s.lib = dlmopen(LM_ID_NEWLM, c.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!s.lib) {
        s.error = c + ": " + dlerror();
        continue;
      }
      break;
    }
    if (!s.lib) {
      if (s.error.empty())
        s.error = "liblesionflow_spm.so not found next to the executable or at " LF_SPM_SHIM;
      return;
    }
    s.train = reinterpret_cast<decltype(s.train)>(dlsym(s.lib, "lf_spm_train"));
    s.load_bytes = reinterpret_cast<decltype(s.load_bytes)>(dlsym(s.lib, "lf_spm_load_bytes"));
    s.free_ = reinterpret_cast<decltype(s.free_)>(dlsym(s.lib, "lf_spm_free"));
    s.encode = reinterpret_cast<decltype(s.encode)>(dlsym(s.lib, "lf_spm_encode"));
    s.decode = reinterpret_cast<decltype(s.decode)>(dlsym(s.lib, "lf_spm_decode"));
    s.vocab = reinterpret_cast<decltype(s.vocab)>(dlsym(s.lib, "lf_spm_vocab_size"));
    s.special = reinterpret_cast<decltype(s.special)>(dlsym(s.lib, "lf_spm_special"));
    if (!s.train || !s.load_bytes || !s.encode || !s.decode || !s.vocab || !s.special || !s.free_) {
      s.error = "liblesionflow_spm.so lacks expected symbols";
      s.lib = nullptr;
    }
  });
  return s;
}

}  // namespace

struct Tokenizer::Handle {
  void* p = nullptr;
  ~Handle() {
    if (p) shim().free_(p);
  }
};

Tokenizer::Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Result<Tokenizer> Tokenizer::from_bytes(const std::string& bytes) {
  const Shim& s = shim();
  if (!s.lib) return Status::error("sentencepiece: " + s.error);
  char err[1024] = {0};
  void* p = s.load_bytes(bytes.data(), static_cast<int>(bytes.size()), err, sizeof err);
  if (!p) return Status::error(std::string("sentencepiece: cannot load model: ") + err);
  Tokenizer t;
  t.h_ = std::make_unique<Handle>();
  t.h_->p = p;
  t.bytes_ = bytes;
  t.unk_id_ = s.special(p, 0);
  t.bos_id_ = s.special(p, 1);
  t.pad_id_ = s.special(p, 3);
  if (t.pad_id_ < 0 || t.bos_id_ < 0)
    return Status::error(
        "sentencepiece model lacks pad or bos pieces (train it with lesionflow text "
        "train-tokenizer)");
  return t;
}

Result<Tokenizer> Tokenizer::load_file(const std::string& path) {
  LF_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  auto t = from_bytes(bytes);
  if (!t.ok()) return t.status().with_context(path);
  return t;
}

Result<Tokenizer> Tokenizer::train(const std::vector<std::string>& corpus,
                                   const TokenizerTrainConfig& cfg) {
  const Shim& s = shim();
  if (!s.lib) return Status::error("sentencepiece: " + s.error);
  if (corpus.empty()) return Status::error("tokenizer: empty training corpus");
  LF_ASSIGN_OR_RETURN(TempDir scratch, TempDir::create("spm"));
  const std::string& dir = scratch.path();
  std::string text;
  for (const auto& l : corpus) text += l + "\n";
  LF_RETURN_IF_ERROR(write_file_atomic(dir + "/corpus.txt", text));
  std::string args = "--input=" + dir + "/corpus.txt --model_prefix=" + dir +
                     "/spm --vocab_size=" + std::to_string(cfg.vocab_size) +
                     " --model_type=" + cfg.model_type +
                     " --hard_vocab_limit=false --character_coverage=1.0 --pad_id=0 --bos_id=1"
                     " --eos_id=-1 --unk_id=2 --minloglevel=2 --num_threads=1"
                     " --input_sentence_size=1000000 --shuffle_input_sentence=false";
  char err[2048] = {0};
  if (s.train(args.c_str(), err, sizeof err) != 0)
    return Status::error(std::string("tokenizer training failed: ") + err);
  LF_ASSIGN_OR_RETURN(std::string bytes, read_file(dir + "/spm.model"));
  return from_bytes(bytes);
}

std::vector<int> Tokenizer::encode_raw(const std::string& text) const {
  std::vector<int> ids(256);
  int n = shim().encode(h_->p, text.c_str(), ids.data(), static_cast<int>(ids.size()));
  if (n > static_cast<int>(ids.size())) {
    ids.resize(n);
    shim().encode(h_->p, text.c_str(), ids.data(), n);
  }
  ids.resize(n);
  return ids;
}

Encoded Tokenizer::encode(const std::string& text, int max_len) const {
  Encoded e;
  e.ids.assign(max_len, pad_id_);
  e.mask.assign(max_len, 0);
  std::vector<int> raw = encode_raw(text);
  e.ids[0] = bos_id_;
  e.mask[0] = 1;
  int n = std::min<int>(raw.size(), max_len - 1);
  for (int i = 0; i < n; ++i) {
    e.ids[i + 1] = raw[i];
    e.mask[i + 1] = 1;
  }
  e.length = n + 1;
  e.truncated = static_cast<int>(raw.size()) > max_len - 1;
  return e;
}

std::string Tokenizer::decode(const std::vector<int>& ids) const {
  std::vector<char> buf(4096);
  std::vector<int> clean;
  for (int i : ids)
    if (i != pad_id_ && i != bos_id_) clean.push_back(i);
  shim().decode(h_->p, clean.data(), static_cast<int>(clean.size()), buf.data(),
                static_cast<int>(buf.size()));
  return buf.data();
}

int Tokenizer::vocab_size() const { return shim().vocab(h_->p); }
std::string Tokenizer::hash() const { return hash_bytes(bytes_); }

}  // namespace lf
