// Audit of a synthetic set in the fixed reference feature space ("HAM-FD"): one call for the
// CLI (`lesionflow audit`), the experiment runner and tests.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

#include "classify/experiment.h"
#include "lesionflow/status.h"

namespace lf {

// File name of the shipped reference feature network (a 7-class dx CNN on the HAM train split).
inline const char* kReferenceNetworkFile = "ham_ref_cnn64.safetensors";

struct AuditRunOptions {
  std::string synthetic;               // DIR of `lesionflow synth` (manifest.jsonl + PNGs)
  std::string data, splits, captions;  // the real set (prepared cache, splits CSV, captions.jsonl)
  std::string features;  // classifier .safetensors; "" = the shipped reference network
  int bootstrap = 100;
  int max_concept_images = 300;
  int64_t draw_size = 400;  // FD over disjoint draws of this many images (0 = off)
};
// Fidelity (FD with bootstrap CI and the real train-vs-test floor, precision/recall,
// density/coverage), CAS (reference P(malignant) of the synthetic images vs their asked labels),
// memorisation and concept adherence. The JSON names the feature network and its hash.
Result<nlohmann::json> audit_synthetic_set(const AuditRunOptions& o);
// The same audit with the pieces already loaded: features from `lc`, the real train/test splits
// of `real`, the synthetic set `syn` written by synth in `synthetic_dir` (its manifest.jsonl).
Result<nlohmann::json> audit_loaded(LoadedClassifier& lc, const RealData& real,
                                    const LabeledSet& syn, const std::string& synthetic_dir,
                                    int bootstrap = 100, int max_concept_images = 300,
                                    const std::string& feature_name = "", int64_t draw_size = 400);

}  // namespace lf
