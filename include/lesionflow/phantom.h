// Procedural dermoscopy-like lesions with KNOWN ground truth (the embedded default dataset).
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "lesionflow/status.h"

namespace cv {
class Mat;
}

namespace lf {

// The six dermoscopic colours, in this order everywhere in lesionflow.
constexpr int kNumColours = 6;
enum class DermColour { kWhite = 0, kRed, kLightBrown, kDarkBrown, kBlueGray, kBlack };
const std::array<std::string, kNumColours>& colour_names();  // "white", "red", "light brown", ...
// Reference RGB of each colour as rendered by the phantom generator.
std::array<uint8_t, 3> colour_rgb(int colour);
// Fitzpatrick-like skin tones I..VI (1..6), RGB.
std::array<uint8_t, 3> skin_rgb(int fitzpatrick);

// Dermoscopic structures (the D of the ABCD rule), in this order everywhere in lesionflow.
constexpr int kNumStructures = 5;
enum class DermStructure { kNetwork = 0, kGlobules, kStreaks, kVeil, kRegression };
// "pigment network", "dots/globules", "streaks", "blue-whitish veil", "regression structures"
const std::array<std::string, kNumStructures>& structure_names();

struct PhantomParams {
  int fitzpatrick = 2;         // 1..6 skin tone band
  int asymmetry_axes = 0;      // 0: symmetric about both principal axes, 1: one, 2: none
  double irregularity = 0.0;   // 0..1 border irregularity (high-frequency notches/lobes)
  uint32_t colours = 1u << 2;  // bitmask over DermColour (at least one bit)
  double diameter = 0.45;      // lesion diameter as a fraction of image side (0.15..0.8)
  double rotation = 0.0;       // radians, orientation of the principal axes
  bool hair = false;           // dark hair strands over the image
  bool vignette = false;       // dark dermoscope vignette in the corners
  uint32_t structures = 0;     // bitmask over DermStructure, drawn over the lesion (0: none)
  uint64_t seed = 0;           // texture/noise/hair randomness
  nlohmann::json to_json() const;
  static PhantomParams from_json(const nlohmann::json& j);
  int num_colours() const;
  int num_structures() const;
  int border_score() const;  // round(8 * irregularity): 0..8 like the ABCD B criterion
  // Documented label rule: phantom TDS = 1.3*A + 0.1*B + 0.5*C + 0.5*D (D = structures, 0 in
  // the default phantoms); malignant iff TDS >= 4.25.
  double tds() const;
  int label() const { return tds() >= 4.25 ? 1 : 0; }
};

// Draws params from a prior with realistic dependencies (seeded). No structures: the default
// phantom set (and everything measured on it) is unchanged by the structure renderer.
PhantomParams sample_phantom_params(uint64_t seed);
// Phantoms for the structure detectors: larger lesions in light/dark brown (white, blue-gray and
// black come only with the structures that carry them), each structure present with
// probability 0.45, independently.
PhantomParams sample_structure_phantom_params(uint64_t seed);

// Renders an RGB (note: RGB, not BGR) 8-bit image and a 0/255 mask of side `size`.
void render_phantom(const PhantomParams& p, int size, cv::Mat* rgb, cv::Mat* mask);

// n phantoms with their masks (PNG), truth.jsonl (parameters, label) and grid.png in `dir`;
// `structures`: drawn with sample_structure_phantom_params.
Status write_phantom_folder(const std::string& dir, int n, int size, uint64_t seed,
                            bool structures = false);

}  // namespace lf
