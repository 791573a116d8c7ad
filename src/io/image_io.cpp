#include <cctype>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "lesionflow/io.h"

namespace lf {

namespace {

uint32_t be16(const std::string& b, size_t i) {
  return (static_cast<uint32_t>(static_cast<uchar>(b[i])) << 8) | static_cast<uchar>(b[i + 1]);
}

// Width and height from a PNG or JPEG header without decoding; {0, 0} when not found.
std::pair<int64_t, int64_t> header_size(const std::string& b) {
  if (b.size() >= 24 && b.compare(0, 8, "\x89PNG\r\n\x1a\n") == 0 && b.compare(12, 4, "IHDR") == 0)
    return {(int64_t{be16(b, 16)} << 16) | be16(b, 18), (int64_t{be16(b, 20)} << 16) | be16(b, 22)};
  if (b.size() >= 4 && static_cast<uchar>(b[0]) == 0xFF && static_cast<uchar>(b[1]) == 0xD8) {
    size_t i = 2;
    while (i + 9 < b.size() && static_cast<uchar>(b[i]) == 0xFF) {
      const uchar m = static_cast<uchar>(b[i + 1]);
      if (m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC)  // start of frame
        return {be16(b, i + 7), be16(b, i + 5)};
      i += 2 + be16(b, i + 2);
    }
  }
  return {0, 0};
}

}  // namespace

bool is_image_path(const std::string& path) {
  static const char* const kExt[] = {".jpg", ".jpeg", ".jpe",  ".png", ".bmp", ".dib",
                                     ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
                                     ".pnm", ".jp2",  ".sr",   ".ras", ".gif"};
  auto dot = path.rfind('.');
  if (dot == std::string::npos || path.find('/', dot) != std::string::npos) return false;
  std::string ext = path.substr(dot);
  for (auto& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const char* e : kExt)
    if (ext == e) return true;
  return false;
}

Result<cv::Mat> read_image(const std::string& path) {
  if (!file_exists(path)) return Status::error(path + ": image file does not exist");
  LF_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  return decode_image(bytes, path);
}

Result<cv::Mat> decode_image(const std::string& bytes, const std::string& path) {
  if (bytes.empty()) return Status::error(path + ": image file is empty (0 bytes)");
  // libjpeg decodes a truncated JPEG with a grey tail and only a warning: reject it here.
  if (bytes.size() >= 2 && static_cast<uchar>(bytes[0]) == 0xFF &&
      static_cast<uchar>(bytes[1]) == 0xD8) {
    size_t tail = bytes.size() > 64 ? bytes.size() - 64 : 0;
    if (bytes.find("\xFF\xD9", tail) == std::string::npos)
      return Status::error(path + ": truncated JPEG (no end-of-image marker)");
  }
  if (bytes.compare(0, 4, "GIF8") == 0)
    return Status::error(path +
                         ": GIF images cannot be decoded (OpenCV 4.6 has no GIF reader); "
                         "convert it to PNG");
  if (auto [w, h] = header_size(bytes); w * h > kMaxImagePixels)
    return Status::error(path + ": header says " + std::to_string(w) + "x" + std::to_string(h) +
                         " pixels, above the limit of " +
                         std::to_string(kMaxImagePixels / 1000000) + " Mpixel; not decoded");
  std::vector<uchar> buf(bytes.begin(), bytes.end());
  cv::Mat img;
  try {
    img = cv::imdecode(buf, cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    return Status::error(path + ": cannot decode image: " + e.what());
  }
  if (img.empty())
    return Status::error(path + ": not a decodable image (corrupt or unknown format)");
  if (img.cols < kMinImageSide || img.rows < kMinImageSide)
    return Status::error(path + ": image is only " + std::to_string(img.cols) + "x" +
                         std::to_string(img.rows) + " pixels (at least " +
                         std::to_string(kMinImageSide) + "x" + std::to_string(kMinImageSide) +
                         " needed)");
  return img;
}

Result<cv::Mat> read_mask(const std::string& path) {
  if (!file_exists(path)) return Status::error(path + ": mask file does not exist");
  cv::Mat m;
  try {
    m = cv::imread(path, cv::IMREAD_GRAYSCALE);
  } catch (const cv::Exception& e) {
    return Status::error(path + ": cannot decode mask: " + e.what());
  }
  if (m.empty()) return Status::error(path + ": not a decodable mask image");
  cv::Mat bin;
  cv::threshold(m, bin, 127, 255, cv::THRESH_BINARY);
  return bin;
}

Status write_png(const std::string& path, const cv::Mat& img) {
  std::vector<uchar> buf;
  if (!cv::imencode(".png", img, buf)) return Status::error(path + ": PNG encoding failed");
  return write_file_atomic(path, std::string(buf.begin(), buf.end()));
}

}  // namespace lf
