// `lesionflow data inspect | split | prepare | phantom` as library calls: an options struct in,
// a JSON summary out (`data shift` is pipeline/shift_run.h).
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "lesionflow/status.h"

namespace lf {

struct DataInspectOptions {
  std::string dataset = "phantom:2000";  // ham10000:DIR | isic:CSV[:DIR] | folder:DIR | phantom[:N]
  std::string malignant;                 // dx codes counted malignant (default mel,bcc,akiec,scc)
  uint64_t seed = 0;
};
// Counts per label, dx, sex, age band and site; images vs lesions (summarize()).
Result<nlohmann::json> run_data_inspect(const DataInspectOptions& o);

struct DataSplitOptions {
  std::string dataset = "phantom:2000", malignant;
  std::string out;  // splits CSV
  double train = 0.7, val = 0.1, test = 0.2;
  int64_t scarcity = 0;            // also draw N training images (a subset file next to out)
  double malignant_fraction = -1;  // class ratio of that subset (-1: natural)
  uint64_t seed = 0;
};
// Lesion-grouped stratified split: {counts, out, scarcity_subset?, options}.
Result<nlohmann::json> run_data_split(const DataSplitOptions& o);

struct DataPrepareOptions {
  std::string dataset = "phantom:2000", malignant;
  std::string out;  // cache directory
  int size = 64;
  std::string fit = "crop";  // crop | pad (keep the aspect ratio)
  int threads = 2;
  uint64_t seed = 0;
  nlohmann::json to_json() const;
};
// Decodes and resizes every image once into a cache (+ options.json):
// {out, ok, skipped, seconds, images_per_second, size}.
Result<nlohmann::json> run_data_prepare(const DataPrepareOptions& o);

struct PhantomOptions {
  std::string out;
  int n = 16, size = 64;
  bool structures =
      false;  // phantoms with dermoscopic structures (sample_structure_phantom_params)
  uint64_t seed = 0;
};
// Phantom PNGs, masks and truth.jsonl: {out, n, size}.
Result<nlohmann::json> run_data_phantom(const PhantomOptions& o);

}  // namespace lf
