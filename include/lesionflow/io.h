// File io without torch: atomic writes, safetensors, JSONL, CSV, images.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "lesionflow/status.h"

namespace cv {
class Mat;
}

namespace lf {

// Write bytes to path via a temp file in the same directory + rename (atomic on POSIX).
Status write_file_atomic(const std::string& path, const std::string& bytes);
Result<std::string> read_file(const std::string& path);
Status make_dirs(const std::string& path);
bool file_exists(const std::string& path);
// FNV-1a 64-bit hex of bytes / of a file's contents (content hashes for provenance).
std::string hash_bytes(const std::string& bytes);
Result<std::string> hash_file(const std::string& path);
// A model shipped in the repository's models/ folder: $LESIONFLOW_MODELS/file, ./models/file, or
// the source tree's models/file (compiled in). "" when none exists.
std::string shipped_model_path(const std::string& file);
// Standard base64 (RFC 4648, with padding); decoding skips characters outside the alphabet.
std::string base64_encode(const std::string& bytes);
std::string base64_decode(const std::string& text);
// Runs a shell command and returns its standard output ("" when it cannot start).
std::string run_command_capture(const std::string& cmd);
// This program's own executable (/proc/self/exe), for running a stage in a child process.
std::string self_executable_path();

// ---- safetensors -----------------------------------------------------------
enum class DType { kF32, kF64, kI64, kI32, kU8, kBF16, kF16 };
const char* dtype_name(DType d);  // "F32", ...
size_t dtype_size(DType d);

struct RawTensor {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string data;  // little-endian bytes, row-major
  int64_t numel() const;
};

struct SafeTensors {
  std::map<std::string, RawTensor> tensors;     // sorted by name
  std::map<std::string, std::string> metadata;  // "__metadata__"
};

Status save_safetensors(const std::string& path, const SafeTensors& st);  // atomic
Result<SafeTensors> load_safetensors(const std::string& path);
Result<SafeTensors> parse_safetensors(const std::string& bytes, const std::string& name_for_errors);
std::string serialize_safetensors(const SafeTensors& st);

// ---- CSV ----------------------------------------------------------------------
struct CsvTable {
  std::string path;
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;  // each the header's width
  std::vector<int> line_numbers;               // 1-based file line of each row
  int column(const std::string& name) const;   // -1 if absent
};
// RFC-4180-ish: quoted fields, "" escapes, CRLF. Errors name file and line.
Result<CsvTable> read_csv(const std::string& path);
std::string csv_escape(const std::string& field);

// Offset of the first byte that is not valid UTF-8 in s, or std::string::npos.
size_t invalid_utf8_at(const std::string& s);

// ---- images (OpenCV) -------------------------------------------------------------
// File extensions (lower case, with the dot) that dataset folders are scanned for: every format
// OpenCV decodes, plus .gif so GIFs (which OpenCV 4.6 cannot decode) are reported, not ignored.
bool is_image_path(const std::string& path);
constexpr int kMinImageSide = 8;                  // smaller decoded images are refused
constexpr int64_t kMaxImagePixels = 100'000'000;  // a header claiming more is refused undecoded
// Reads an 8-bit BGR image (any depth and channel count converted); errors for missing, empty,
// truncated, corrupt, GIF, too small (< kMinImageSide) or too large (> kMaxImagePixels) files.
Result<cv::Mat> read_image(const std::string& path);
// The same checks on bytes already in memory (an upload); `name` labels the errors.
Result<cv::Mat> decode_image(const std::string& bytes, const std::string& name);
Result<cv::Mat> read_mask(const std::string& path);  // 8-bit single channel, 0/255
Status write_png(const std::string& path, const cv::Mat& img);

}  // namespace lf
