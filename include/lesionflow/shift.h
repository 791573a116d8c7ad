// Acquisition shift: the ways a photo of a lesion taken elsewhere differs from a HAM10000
// dermoscopy close-up (zoomed out with surrounding skin, squashed to a square, a colour cast,
// a dark vignette, a ruler, marker-pen lines, hair, blur and JPEG loss). Used twice: to build a
// shifted copy of a test split (`lesionflow data shift`) and as training augmentation for the
// classifiers (`classify train --shift-augment P`). Every parameter is relative to the image
// size, so a 600x450 original and a 64x64 training image get the same kind of change.
#pragma once
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <random>
#include <string>
#include <vector>

#include "lesionflow/status.h"

namespace lf {

enum class ShiftKind { kZoomOut, kSquash, kColourCast, kVignette, kRuler, kPen, kHair, kBlurJpeg };
const std::vector<ShiftKind>& all_shift_kinds();
const char* shift_name(ShiftKind k);  // zoom, squash, cast, vignette, ruler, pen, hair, blur
// "all" or a comma-separated list of names; an unknown name is an error listing the known ones.
Result<std::vector<ShiftKind>> parse_shift_kinds(const std::string& list);

struct ShiftOptions {
  std::vector<ShiftKind> kinds = all_shift_kinds();
  double probability = 0.5;  // each kind is applied independently with this probability
  int min_kinds = 1;         // at least this many are applied (drawn among `kinds`)
};

// One shifted copy of an 8-bit 3-channel image (BGR or RGB: the channel order only changes which
// channel a colour cast tints). The result keeps the input's size, except kSquash on a
// non-square input, which resizes the whole frame to a square (side = the shorter one) without
// keeping the aspect ratio. `applied` (optional) receives {"kind": {parameters}} of what was done.
cv::Mat apply_shift(const cv::Mat& img, const ShiftOptions& o, std::mt19937_64& rng,
                    nlohmann::json* applied = nullptr);
// One kind with its parameters drawn from rng (the building block of apply_shift).
cv::Mat apply_one_shift(const cv::Mat& img, ShiftKind k, std::mt19937_64& rng,
                        nlohmann::json* params = nullptr);

}  // namespace lf
