#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "lesionflow/io.h"

namespace lf {

Result<cv::Mat> read_image(const std::string& path) {
  if (!file_exists(path)) return Status::error(path + ": image file does not exist");
  LF_ASSIGN_OR_RETURN(std::string bytes, read_file(path));
  if (bytes.empty()) return Status::error(path + ": image file is empty (0 bytes)");
  // libjpeg decodes a truncated JPEG with a grey tail and only a warning: reject it here.
  if (bytes.size() >= 2 && static_cast<uchar>(bytes[0]) == 0xFF &&
      static_cast<uchar>(bytes[1]) == 0xD8) {
    size_t tail = bytes.size() > 64 ? bytes.size() - 64 : 0;
    if (bytes.find("\xFF\xD9", tail) == std::string::npos)
      return Status::error(path + ": truncated JPEG (no end-of-image marker)");
  }
  std::vector<uchar> buf(bytes.begin(), bytes.end());
  cv::Mat img;
  try {
    img = cv::imdecode(buf, cv::IMREAD_COLOR);
  } catch (const cv::Exception& e) {
    return Status::error(path + ": cannot decode image: " + e.what());
  }
  if (img.empty())
    return Status::error(path + ": not a decodable image (corrupt or unknown format)");
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
