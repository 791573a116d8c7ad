// C API over sentencepiece, built as its own module and loaded with dlmopen (see CMakeLists).
// Only plain C types cross this boundary.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstring>
#include <string>
#include <vector>

namespace {
void copy_err(const std::string& s, char* err, int errlen) {
  if (!err || errlen <= 0) return;
  std::strncpy(err, s.c_str(), errlen - 1);
  err[errlen - 1] = 0;
}
}  // namespace

extern "C" {
int lf_spm_train(const char* args, char* err, int errlen) {
  auto s = sentencepiece::SentencePieceTrainer::Train(args);
  if (!s.ok()) {
    copy_err(s.ToString(), err, errlen);
    return 1;
  }
  return 0;
}
void* lf_spm_load(const char* path, char* err, int errlen) {
  auto* p = new sentencepiece::SentencePieceProcessor();
  auto s = p->Load(path);
  if (!s.ok()) {
    copy_err(s.ToString(), err, errlen);
    delete p;
    return nullptr;
  }
  return p;
}
void lf_spm_free(void* h) { delete static_cast<sentencepiece::SentencePieceProcessor*>(h); }
// Returns the number of ids (may exceed max; only max are written).
int lf_spm_encode(void* h, const char* text, int* ids, int max) {
  std::vector<int> v;
  static_cast<sentencepiece::SentencePieceProcessor*>(h)->Encode(text, &v);
  for (int i = 0; i < static_cast<int>(v.size()) && i < max; ++i) ids[i] = v[i];
  return static_cast<int>(v.size());
}
int lf_spm_decode(void* h, const int* ids, int n, char* out, int outlen) {
  std::string s;
  static_cast<sentencepiece::SentencePieceProcessor*>(h)->Decode(std::vector<int>(ids, ids + n),
                                                                 &s);
  copy_err(s, out, outlen);
  return static_cast<int>(s.size());
}
int lf_spm_vocab_size(void* h) {
  return static_cast<sentencepiece::SentencePieceProcessor*>(h)->GetPieceSize();
}
int lf_spm_special(void* h, int which) {  // 0 unk, 1 bos, 2 eos, 3 pad
  auto* p = static_cast<sentencepiece::SentencePieceProcessor*>(h);
  return which == 0   ? p->unk_id()
         : which == 1 ? p->bos_id()
         : which == 2 ? p->eos_id()
                      : p->pad_id();
}
}
extern "C" void* lf_spm_load_bytes(const char* data, int n, char* err, int errlen) {
  auto* p = new sentencepiece::SentencePieceProcessor();
  auto s = p->LoadFromSerializedProto(std::string_view(data, n));
  if (!s.ok()) {
    copy_err(s.ToString(), err, errlen);
    delete p;
    return nullptr;
  }
  return p;
}
