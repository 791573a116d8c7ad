// Dermoscopic structures (the D of the ABCD rule) in a segmented lesion, by classical image
// analysis. Every size is a fraction of the lesion's equivalent radius, so the result does not
// depend on the resolution. Rules and thresholds: docs/concepts.md, "Structures".
#pragma once
#include <array>
#include <opencv2/core.hpp>

#include "lesionflow/phantom.h"

namespace lf {

struct StructureScores {
  // network: share of the lesion covered by mesh cells; globules: round dark blobs counted;
  // streaks: radial dark lines crossing the border counted; veil: blue-white share of the
  // lesion; regression: white-scar share of the lesion (peppering in `peppering`).
  std::array<double, kNumStructures> score{};
  std::array<bool, kNumStructures> present{};
  int count = 0;
  int peppering = 0;  // fine blue-gray granules
};

// lab: CIELAB (CV_32FC3, L* 0..100) of the image at the working size (hair not inpainted: that
// would erase the structures); mask: 0/255 lesion; skin: median CIELAB of the surrounding skin;
// hair: 0/255 pixels to ignore (may be empty).
// lab_hairless: the same after hair removal (colour regions: veil, regression).
StructureScores measure_structures(const cv::Mat& lab, const cv::Mat& lab_hairless,
                                   const cv::Mat& mask, const cv::Vec3f& skin,
                                   const cv::Mat& hair = cv::Mat());

}  // namespace lf
