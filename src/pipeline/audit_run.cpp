#include "pipeline/audit_run.h"

#include "classify/experiment.h"
#include "eval/audit.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"

namespace lf {

Result<nlohmann::json> audit_synthetic_set(const AuditRunOptions& o) {
  std::string feat = o.features.empty() ? shipped_model_path(kReferenceNetworkFile) : o.features;
  if (feat.empty())
    return Status::error(
        std::string("audit: no --features given and the shipped reference network models/") +
        kReferenceNetworkFile + " was not found");
  LF_ASSIGN_OR_RETURN(LoadedClassifier lc, load_classifier(feat));
  LF_ASSIGN_OR_RETURN(RealData real, load_real_data(o.data, o.splits, o.captions));
  if (real.ps.size != lc.model->config().image_size)
    return Status::error(
        feat + ": the feature network takes " + std::to_string(lc.model->config().image_size) +
        "px images, the real set " + o.data + " is " + std::to_string(real.ps.size) + "px");
  int64_t skipped = 0;
  LF_ASSIGN_OR_RETURN(LabeledSet syn, load_synthetic(o.synthetic, real.ps.size, 1.0f, &skipped));
  if (syn.count() < 10)
    return Status::error(o.synthetic + ": fewer than 10 readable synthetic images");
  if (skipped)
    log_warn(o.synthetic + ": " + std::to_string(skipped) + " unreadable images skipped");
  LF_ASSIGN_OR_RETURN(std::string h, hash_file(feat));
  const std::string name = "reference network " + feat + " (" + arch_name(lc.model->config().arch) +
                           ", " + std::to_string(lc.model->config().outputs()) + " outputs, hash " +
                           h + ")";
  LF_ASSIGN_OR_RETURN(nlohmann::json out, audit_loaded(lc, real, syn, o.synthetic, o.bootstrap,
                                                       o.max_concept_images, name, o.draw_size));
  out["feature_network"] = {
      {"path", feat}, {"hash", h}, {"metadata_val_auc", lc.metadata["val_auc"]}};
  out["synthetic"] = {{"dir", o.synthetic}, {"images", syn.count()}, {"skipped", skipped}};
  return out;
}

Result<nlohmann::json> audit_loaded(LoadedClassifier& lc, const RealData& real,
                                    const LabeledSet& syn, const std::string& synthetic_dir,
                                    int bootstrap, int max_concept_images,
                                    const std::string& feature_name, int64_t draw_size) {
  auto tr = labeled_from_prepared(real.ps, real.train, &real.captions);
  auto te = labeled_from_prepared(real.ps, real.test, &real.captions);
  AuditInputs ai;
  Classifier model = lc.model;
  ai.features = [model](const uint8_t* px, int64_t n, int size) mutable {
    return extract_features(model, px, n, size);
  };
  ai.p_malignant = [model](const LabeledSet& s) mutable { return predict_malignant(model, s); };
  ai.threshold = lc.threshold;
  ai.real_train = &tr;
  ai.real_test = &te;
  ai.synthetic = &syn;
  LF_ASSIGN_OR_RETURN(ai.manifest, read_jsonl(synthetic_dir + "/manifest.jsonl"));
  ai.real_captions = real.captions;
  ai.bootstrap = bootstrap;
  ai.max_concept_images = max_concept_images;
  ai.draw_size = draw_size;
  ai.feature_name = !feature_name.empty()
                        ? feature_name
                        : std::string("penultimate layer of the real-only classifier (") +
                              arch_name(model->config().arch) + ")";
  return run_audit(ai);
}

}  // namespace lf
