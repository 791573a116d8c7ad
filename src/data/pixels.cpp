#include <opencv2/imgproc.hpp>

#include "lesionflow/io.h"
#include "lesionflow/phantom.h"
#include "lesionflow/record_pixels.h"

namespace lf {

Status load_record_pixels(const Record& r, int phantom_size, cv::Mat* rgb, cv::Mat* mask,
                          std::string* mask_warning) {
  *rgb = cv::Mat();
  *mask = cv::Mat();
  if (mask_warning) mask_warning->clear();
  if (r.source == "phantom") {
    render_phantom(PhantomParams::from_json(r.extra.at("phantom")), phantom_size, rgb, mask);
    return Status();
  }
  auto img = read_image(r.image_path);
  if (!img.ok()) return img.status();
  cv::cvtColor(*img, *rgb, cv::COLOR_BGR2RGB);
  if (r.mask_path.empty()) return Status();
  auto m = read_mask(r.mask_path);
  std::string warn;
  if (!m.ok()) {
    warn = m.status().message() + "; mask ignored";
  } else if (m->size() != img->size()) {
    warn = r.mask_path + ": mask size " + std::to_string(m->cols) + "x" + std::to_string(m->rows) +
           " differs from image " + std::to_string(img->cols) + "x" + std::to_string(img->rows) +
           "; mask ignored";
  } else {
    *mask = *m;
  }
  if (mask_warning) *mask_warning = warn;
  return Status();
}

}  // namespace lf
