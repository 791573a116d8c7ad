// Sentencepiece tokenizer (Debian libsentencepiece, loaded through a dlmopen'ed shim because its
// embedded protobuf clashes with libtorch's). Fixed max length with padding mask.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lesionflow/status.h"

namespace lf {

struct TokenizerTrainConfig {
  int vocab_size = 512;            // upper bound; shrinks if the corpus is small
  std::string model_type = "bpe";  // bpe: whole clinical words become single pieces
  uint64_t seed = 0;
};

struct Encoded {
  std::vector<int32_t> ids;   // [max_len], BOS first, padded with pad_id
  std::vector<uint8_t> mask;  // [max_len], 1 = real token
  int length = 0;             // real tokens (<= max_len); truncated text is counted in `truncated`
  bool truncated = false;
};

class Tokenizer {
 public:
  // Trains on lines of text; the model file bytes are kept (and saved inside checkpoints).
  static Result<Tokenizer> train(const std::vector<std::string>& corpus,
                                 const TokenizerTrainConfig& cfg);
  static Result<Tokenizer> load_file(const std::string& model_path);
  static Result<Tokenizer> from_bytes(const std::string& model_bytes);
  Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  Encoded encode(const std::string& text, int max_len) const;
  std::vector<int> encode_raw(const std::string& text) const;
  std::string decode(const std::vector<int>& ids) const;
  int vocab_size() const;
  int pad_id() const { return pad_id_; }
  int bos_id() const { return bos_id_; }
  int unk_id() const { return unk_id_; }
  const std::string& model_bytes() const { return bytes_; }
  std::string hash() const;

 private:
  struct Handle;
  std::unique_ptr<Handle> h_;
  std::string bytes_;
  int pad_id_ = 0, bos_id_ = 1, unk_id_ = 2;
};

}  // namespace lf
