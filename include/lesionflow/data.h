// Dataset layer: one record type for every source (HAM10000, ISIC CSVs, ImageFolder,
// phantom), lesion-grouped stratified splits, scarcity subsets, the prepared cache.
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "lesionflow/status.h"

namespace lf {

// Explicit, configurable dx -> benign/malignant mapping.
struct LabelMap {
  std::set<std::string> malignant = {"mel", "bcc", "akiec", "scc"};
  int label_of(const std::string& dx) const { return malignant.count(dx) ? 1 : 0; }
  // Parse "mel,bcc,akiec" (empty keeps the default).
  static Result<LabelMap> parse(const std::string& csv_list);
};

// Diagnosis codes we understand (HAM10000 vocabulary + scc/unk from ISIC 2019).
const std::vector<std::string>& known_dx_codes();
std::string dx_long_name(const std::string& dx);  // "mel" -> "melanoma"

struct Record {
  std::string id;                // image id (unique within a dataset)
  std::string image_path;        // empty for procedurally generated images
  std::string mask_path;         // optional
  std::string dx;                // lower-case code: nv, mel, bkl, bcc, akiec, vasc, df, scc, unk
  int label = -1;                // 0 benign, 1 malignant, -1 unknown
  std::string lesion_id;         // grouping key for splits (may be empty)
  std::string patient_id;        // grouping key when no lesion id
  double age = -1;               // years; < 0 unknown
  std::string sex = "unknown";   // male | female | unknown
  std::string site = "unknown";  // body site (HAM "localization")
  std::string dx_type;           // histo | follow_up | consensus | confocal | ...
  std::string source;            // dataset kind
  nlohmann::json extra = nlohmann::json::object();  // e.g. phantom ground truth
  std::string group_key() const;                    // lesion_id, else patient_id, else id
};
nlohmann::json record_to_json(const Record& r);
Record record_from_json(const nlohmann::json& j);
std::string age_band(double age);        // "<30", "30-44", "45-59", "60-74", "75+", "unknown"
std::string skin_band(int fitzpatrick);  // 1..6 -> "I-II" | "III-IV" | "V-VI", else "unknown"
// Subgroup attributes of a record: sex, age band, site, and skin-tone band when a caption
// record (captions.jsonl line) gives the measured Fitzpatrick-like type.
std::map<std::string, std::string> record_groups(const Record& r, const nlohmann::json* caption);

struct Dataset {
  std::string kind;  // ham10000 | isic | folder | phantom
  std::string root;
  std::vector<Record> records;
};

// "ham10000:PATH" | "isic:CSV[:IMAGE_DIR]" | "folder:PATH" | "phantom[:N]".
// Readers verify that every referenced image exists and fail with file:line:column otherwise.
Result<Dataset> load_dataset(const std::string& spec, const LabelMap& labels = {},
                             uint64_t seed = 0);
Result<Dataset> read_ham10000(const std::string& root, const LabelMap& labels);
Result<Dataset> read_isic_csv(const std::string& csv, const std::string& image_dir,
                              const LabelMap& labels);
Result<Dataset> read_image_folder(const std::string& root, const LabelMap& labels);

// Counts per class, sex, age band, site; lesions vs images.
nlohmann::json summarize(const Dataset& ds);

// ---- splits ------------------------------------------------------------------
struct SplitConfig {
  double train = 0.7, val = 0.1, test = 0.2;  // fractions, sum to 1
  uint64_t seed = 0;
};
// Returns one of "train"/"val"/"test" per record: stratified by dx, grouped by group_key()
// (no group in two splits), deterministic for a seed.
Result<std::vector<std::string>> make_splits(const std::vector<Record>& recs,
                                             const SplitConfig& cfg);
Status write_splits(const std::string& path, const std::vector<Record>& recs,
                    const std::vector<std::string>& split);
// Map id -> split read from a splits CSV (id,group,dx,label,split).
Result<std::vector<std::pair<std::string, std::string>>> read_splits(const std::string& path);
// Indices of records whose split is `name`, using a splits file.
Result<std::vector<size_t>> select_split(const std::vector<Record>& recs,
                                         const std::string& splits_csv, const std::string& name);

// Like select_split, and without a splits file the default split: every 10th record is "val",
// the rest "train" ("test" is empty).
Result<std::vector<size_t>> split_or_default(const std::vector<Record>& recs,
                                             const std::string& splits_csv,
                                             const std::string& name);

// Scarcity: n training images (indices into `pool`) with malignant fraction `mal_frac`
// (< 0: keep the pool's ratio); prefers one image per lesion; seeded.
Result<std::vector<size_t>> scarcity_subset(const std::vector<Record>& recs,
                                            const std::vector<size_t>& pool, int64_t n,
                                            double mal_frac, uint64_t seed);

// Makes the splits of `ds` (write_splits to `out`) and, when scarcity > 0, the scarcity subset of
// its train split (OUT_STEM.scarcityN.csv with one id per line). Returns {splits, seed, counts:
// {split: {images, dx_fraction}}, scarcity_subset?}.
Result<nlohmann::json> split_dataset(const Dataset& ds, const SplitConfig& cfg,
                                     const std::string& out, int64_t scarcity = 0,
                                     double malignant_fraction = -1);

// Images with labels, a per-image loss weight and subgroup attributes.
struct LabeledSet {
  int size = 0;
  std::vector<uint8_t> pixels;  // N*S*S*3 RGB, NHWC
  std::vector<int> labels;
  std::vector<float> weights;
  std::vector<std::string> ids, sources;                   // source: "real" | "synthetic" | ...
  std::vector<std::map<std::string, std::string>> groups;  // sex, age, site, skin
  std::vector<int> cls;  // class index for a multi-class (dx) classifier; -1 = none
  int64_t count() const { return static_cast<int64_t>(labels.size()); }
  const uint8_t* image(int64_t i) const { return pixels.data() + i * size * size * 3; }
  void add(const uint8_t* px, int label, float weight, const std::string& id,
           const std::string& source, std::map<std::string, std::string> g);
  void append(const LabeledSet& o, float weight_scale = 1.0f);
  LabeledSet subset(const std::vector<int64_t>& idx) const;
};

// ---- prepared cache -------------------------------------------------------------
enum class FitMode { kCrop, kPad };
struct PrepareConfig {
  int size = 64;                 // output side (32, 64, 128, ...)
  FitMode fit = FitMode::kCrop;  // keep aspect: centre crop or pad (edge replicate)
  int threads = 2;
};
struct PreparedSet {
  // images: N*S*S*3 RGB u8 (row-major, NHWC); masks: N*S*S u8 0/255 (0 if no mask)
  int size = 0;
  std::vector<Record> records;
  std::vector<uint8_t> images, masks;
  std::vector<uint8_t> has_mask;
  int64_t count() const { return static_cast<int64_t>(records.size()); }
  const uint8_t* image(int64_t i) const { return images.data() + i * size * size * 3; }
  const uint8_t* mask(int64_t i) const { return masks.data() + i * size * size; }
};
struct PrepareStats {
  int64_t ok = 0, skipped = 0, masks_missing = 0;
  std::vector<std::string> skipped_messages;
  double seconds = 0;
};
// Decodes, fits and resizes every record (phantoms are rendered). Corrupt images are skipped
// with a warning and counted.
Result<PreparedSet> prepare(const Dataset& ds, const PrepareConfig& cfg, PrepareStats* stats);
// Cache on disk: DIR/images.safetensors (images U8 [N,S,S,3], masks U8 [N,S,S], has_mask U8 [N])
// + DIR/records.jsonl + DIR/prepare.json.
Status save_prepared(const std::string& dir, const PreparedSet& ps, const PrepareStats& stats);
Result<PreparedSet> load_prepared(const std::string& dir);

}  // namespace lf
