// Clinical concepts measured from pixels and mask: segmentation, ABC(D) criteria, colours,
// size, skin tone, TDS; the structured 12-field report. Formulas: docs/concepts.md.
#pragma once
#include <array>
#include <nlohmann/json.hpp>
#include <string>

#include "lesionflow/captions.h"
#include "lesionflow/phantom.h"

namespace cv {
class Mat;
}

namespace lf {

struct Segmentation {
  std::string source;     // "given" | "auto" | "none"
  double confidence = 0;  // 0..1
  std::string warning;    // why it failed or is doubtful
};

// Hair suppression (black-hat + inpaint). rgb: 8-bit RGB.
void remove_hair(const cv::Mat& rgb, cv::Mat* out);
// Classical segmentation: colour distance from the skin reference (median of the image border,
// vignette excluded) -> Otsu -> morphology -> the most central large component -> holes filled.
// Returns the mask (0/255) in *mask; confidence from class separability and component shape.
Segmentation segment_lesion(const cv::Mat& rgb, cv::Mat* mask);

struct Measurements {
  bool ok = false;
  std::string warning;
  std::string mask_source;
  double mask_confidence = 0;
  // size
  double area_fraction = 0;  // lesion pixels / image pixels
  double diameter_px = 0;    // maximum Feret diameter
  double diameter_mm = -1;   // when a scale is given
  // asymmetry about the two principal axes (0 = major)
  std::array<double, 2> shape_mismatch{0, 0};  // |M xor mirror(M)| / |M|
  std::array<double, 2> colour_mismatch{
      0, 0};          // fraction of overlapping pixels whose colour class differs
  int asymmetry = 0;  // 0..2 asymmetric axes
  // border
  double compactness = 0;  // P^2 / (4 pi A), 1 for a disc
  double solidity = 0;     // A / convex hull area
  std::array<double, 8>
      sector_irregularity{};  // residual radius std / mean radius per 45-degree sector
  int border = 0;             // 0..8 irregular sectors
  // colour
  std::array<double, kNumColours> colour_fraction{};  // of lesion pixels
  std::array<bool, kNumColours> colour_present{};
  int colour_count = 0;
  std::string dominant_colour;
  double colour_variability = 0;  // std of L* inside the lesion
  // skin
  double ita = 0;        // individual typology angle of the surrounding skin (degrees)
  int fitzpatrick = -1;  // I..VI-like band from ITA
  // dermoscopic structures (DermStructure order; see docs/concepts.md, "Structures")
  std::array<double, kNumStructures> structure_score{};
  std::array<bool, kNumStructures> structure_present{};
  int structure_count = 0;  // D of the ABCD rule
  int peppering = 0;        // fine blue-gray granules counted
  // total dermoscopy score 1.3 A + 0.1 B + 0.5 C + 0.5 D
  double tds = 0;
  nlohmann::json to_json() const;
};

struct MeasureConfig {
  double min_colour_fraction = 0.05;  // a colour counts when it covers >= 5% of the lesion
  double max_colour_distance = 28.0;  // CIELAB ΔE to the nearest reference colour
  double min_skin_distance = 6.0;     // a lesion colour differs from the skin by >= this ΔE
  double white_above_skin = 3.0;      // "white" is lighter than the skin by >= this L*
  // Axis asymmetric when shape mismatch exceeds shape_asym_threshold or colour mismatch exceeds
  // colour_asym_threshold (tuned to the experts' 0/1/2 scale: docs/concepts.md, "Asymmetry").
  double shape_asym_threshold = 0.12;
  double colour_asym_threshold = 0.40;
  double sector_threshold = 0.035;  // sector irregular when residual/mean radius exceeds this
  double px_per_mm = 0;             // scale, 0 = unknown
};

// Images with a long side above this are measured downscaled to it (INTER_AREA), so large
// dermoscopy images cost about as much as HAM's and give the same result as their resizes.
constexpr int kMeasureMaxSide = 256;

// rgb: 8-bit RGB image; mask: 0/255 or empty (then segmented automatically). Hair is removed
// once; diameter_px is in the input's pixels, every other quantity is relative to the image.
Measurements measure_lesion(const cv::Mat& rgb, const cv::Mat& mask, const MeasureConfig& cfg = {});
int fitzpatrick_from_ita(double ita);

// Facts for the caption: metadata from the record, criteria from the measurements.
CaptionFacts facts_from_measurements(const Record& r, const Measurements& m);
// The 12-field structured report (JSON), only measured or given facts; unknown stays unknown.
nlohmann::json structured_report(const CaptionFacts& f, const Measurements& m);
std::string report_prose(const nlohmann::json& report);

}  // namespace lf
