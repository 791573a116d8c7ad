#include "pipeline/data_runs.h"

#include <algorithm>

#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/phantom.h"

namespace lf {
namespace {
Result<Dataset> open(const std::string& dataset, const std::string& malignant, uint64_t seed) {
  LF_ASSIGN_OR_RETURN(LabelMap lm, LabelMap::parse(malignant));
  return load_dataset(dataset, lm, seed);
}
}  // namespace

Result<nlohmann::json> run_data_inspect(const DataInspectOptions& o) {
  LF_ASSIGN_OR_RETURN(Dataset ds, open(o.dataset, o.malignant, o.seed));
  return summarize(ds);
}

Result<nlohmann::json> run_data_split(const DataSplitOptions& o) {
  if (o.out.empty()) return Status::error("data split: --out CSV is required");
  LF_ASSIGN_OR_RETURN(Dataset ds, open(o.dataset, o.malignant, o.seed));
  LF_ASSIGN_OR_RETURN(nlohmann::json j, split_dataset(ds, {o.train, o.val, o.test, o.seed}, o.out,
                                                      o.scarcity, o.malignant_fraction));
  j["out"] = o.out;
  j["options"] = {{"dataset", o.dataset},   {"malignant", o.malignant},
                  {"out", o.out},           {"train", o.train},
                  {"val", o.val},           {"test", o.test},
                  {"scarcity", o.scarcity}, {"malignant_fraction", o.malignant_fraction}};
  return j;
}

nlohmann::json DataPrepareOptions::to_json() const {
  return {{"dataset", dataset}, {"malignant", malignant},
          {"out", out},         {"size", size},
          {"fit", fit},         {"seed", seed}};
}

Result<nlohmann::json> run_data_prepare(const DataPrepareOptions& o) {
  if (o.out.empty()) return Status::error("data prepare: --out DIR is required");
  if (o.fit != "crop" && o.fit != "pad")
    return Status::error("--fit must be crop or pad, got '" + o.fit + "'");
  log_info("data prepare " + o.to_json().dump());
  LF_ASSIGN_OR_RETURN(Dataset ds, open(o.dataset, o.malignant, o.seed));
  PrepareConfig pc;
  pc.size = o.size;
  pc.fit = o.fit == "pad" ? FitMode::kPad : FitMode::kCrop;
  pc.threads = std::max(1, o.threads);
  PrepareStats st;
  LF_ASSIGN_OR_RETURN(PreparedSet ps, prepare(ds, pc, &st));
  LF_RETURN_IF_ERROR(save_prepared(o.out, ps, st));
  LF_RETURN_IF_ERROR(write_file_atomic(o.out + "/options.json", o.to_json().dump(2) + "\n"));
  return nlohmann::json{
      {"out", o.out},          {"ok", st.ok},
      {"skipped", st.skipped}, {"seconds", st.seconds},
      {"size", o.size},        {"images_per_second", st.ok / std::max(st.seconds, 1e-9)}};
}

Result<nlohmann::json> run_data_phantom(const PhantomOptions& o) {
  if (o.out.empty()) return Status::error("data phantom: --out DIR is required");
  LF_RETURN_IF_ERROR(write_phantom_folder(o.out, o.n, o.size, o.seed, o.structures));
  return nlohmann::json{{"out", o.out}, {"n", o.n}, {"size", o.size}};
}

}  // namespace lf
