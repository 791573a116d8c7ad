// `lesionflow data shift`: a shifted copy of one split of a dataset (HAM10000 layout), to test
// classifiers under acquisition shift (see include/lesionflow/shift.h).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "lesionflow/status.h"

namespace lf {

struct ShiftRunOptions {
  std::string dataset;    // any dataset spec (ham10000:DIR, isic:CSV:DIR, folder:DIR, ...)
  std::string malignant;  // dx codes counted malignant (default mel,bcc,akiec,scc)
  std::string splits;     // splits CSV; empty = every image
  std::string split = "test";
  std::string kinds = "all";  // shift kinds (parse_shift_kinds)
  double probability = 0.5;   // per kind
  int min_kinds = 1;
  std::string out;  // new folder: images/*.png, HAM10000_metadata.csv, shift.jsonl
  uint64_t seed = 0;
  int threads = 2;
};
// Writes the folder (atomically: OUT.partial renamed at the end); image i's shift depends only
// on (seed, image id). {out, images, skipped, per_kind}.
Result<nlohmann::json> run_data_shift(const ShiftRunOptions& o);

}  // namespace lf
