// Caption composer: clinical facts (measured or given) -> short caption. Unknown stays unknown.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "lesionflow/data.h"
#include "lesionflow/status.h"

namespace lf {

struct CaptionFacts {
  std::string dx;   // code; "" unknown
  int label = -1;   // 0 benign, 1 malignant, -1 unknown
  double age = -1;  // years; < 0 unknown
  std::string sex = "unknown";
  std::string site = "unknown";
  int asymmetry = -1;                   // 0..2 asymmetric axes; -1 unknown
  int border = -1;                      // 0..8 irregular sectors; -1 unknown
  std::vector<std::string> colours;     // dermoscopic colours present; empty = unknown
  std::vector<std::string> structures;  // dermoscopic structures present; empty = none/unknown
  double size_fraction = -1;            // lesion diameter / image side; < 0 unknown
  int fitzpatrick = -1;                 // 1..6; -1 unknown
};

// Facts given by the metadata alone (diagnosis, label, age, sex, site).
CaptionFacts metadata_facts(const Record& r);
// Metadata facts plus the known ground truth for phantoms.
CaptionFacts facts_from_record(const Record& r);

// Short caption (a few dozen tokens). variant_seed picks among paraphrases and the order of the
// harmless clauses; variant_seed = 0 gives the canonical wording.
std::string compose_caption(const CaptionFacts& f, uint64_t variant_seed = 0);

// A captions.jsonl (as `caption` writes it, or a user's own) by image id. Every record needs a
// string "id" and a string "caption" of at most kMaxCaptionChars; ids are unique. Errors name
// the file and line. An empty path gives an empty map.
constexpr size_t kMaxCaptionChars = 4096;
Result<std::map<std::string, nlohmann::json>> read_caption_file(const std::string& path);

// The share of `captions` that name each dermoscopic structure (structure_names(): "pigment
// network", ...), as {phrase: fraction}. A generator records it for its training captions
// (checkpoint metadata "caption_profile"), so prompts that use a phrase far more often than its
// training captions did can be flagged: a detector that changed after training changes what the
// phrase means to the model (docs/results.md, eighteenth sitting).
nlohmann::json caption_phrase_profile(const std::vector<std::string>& captions);
// `caption` without each of `phrases` and the list punctuation around it ("A, X and B" -> "A and
// B", "X and B" -> "B", "A and X" -> "A", "; X, B" -> "; B").
std::string without_phrases(std::string caption, const std::vector<std::string>& phrases);

std::string number_word(int n);  // 1 -> "one", ...
std::string roman(int n);        // 1..6 -> "I".."VI"

}  // namespace lf

namespace lf {
// User template (no recompiling): placeholders {dx} {malignancy} {site} {age} {sex}
// {asymmetry} {border} {colours} {structures} {size} {skin}. A placeholder whose fact is unknown
// becomes empty, and the whole "[ ... ]" group around it is dropped, e.g.
//   "dermoscopy of {malignancy} {dx}[ on the {site}][; {colours}]"
std::string apply_template(const std::string& tmpl, const CaptionFacts& f);

// Captioning of a whole dataset (lesionflow caption): measures the ABC(D) concepts of every image
// (given masks, else automatic segmentation), joins them with the metadata into captions.jsonl
// (id, caption, canonical caption, structured report, measurements, dx, label) and writes
// OUT.summary.json (errors, warnings, auto-segmentation Dice vs given masks, colours per dx, TDS
// AUC).
struct CaptionRunOptions {
  std::string dataset = "phantom:2000";  // dataset spec (see load_dataset)
  std::string malignant;                 // dx codes counted as malignant ("" = the default map)
  std::string out = "captions.jsonl";
  std::string mask = "given";  // given | auto
  std::string template_file;   // caption template (see apply_template); "" = the composer
  int limit = 0;               // only the first N images (0 = all)
  double px_per_mm = 0;        // image scale for diameters in mm (0 = unknown)
  std::string llm_url, llm_model = "local";  // optional rewrite by an OpenAI-compatible server
  double llm_timeout = 30;
  uint64_t seed = 0;
  int threads = 0;  // measuring threads (0 = 2)
  nlohmann::json to_json() const;
};
// Returns the summary JSON (+ "out" and "summary" paths).
Result<nlohmann::json> caption_dataset(const CaptionRunOptions& o);
// Measures every PNG/JPEG of `images` (not grids or masks) into JSONL (file, measured); corrupt
// images are skipped and counted. out_path "" = IMAGES/concepts.jsonl. `threads` workers (0 = 2).
// Resumable: finished images go to OUT.partial.jsonl as they are measured, and a run killed or
// stopped (SIGTERM) is continued by the same command. {measured, skipped, resumed, out}.
// recursive: subfolders too ("file" is then the path relative to `images`).
Result<nlohmann::json> measure_image_folder(const std::string& images, const std::string& out_path,
                                            int threads = 0, bool recursive = false);

}  // namespace lf
