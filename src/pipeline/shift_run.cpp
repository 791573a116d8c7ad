#include "pipeline/shift_run.h"

#include <filesystem>
#include <map>
#include <opencv2/imgcodecs.hpp>
#include <sstream>

#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/parallel.h"
#include "lesionflow/rng.h"
#include "lesionflow/scratch.h"
#include "lesionflow/shift.h"

namespace lf {

Result<nlohmann::json> run_data_shift(const ShiftRunOptions& o) {
  namespace fs = std::filesystem;
  if (o.out.empty()) return Status::error("data shift: --out DIR is required");
  if (fs::exists(o.out))
    return Status::error(o.out + ": already exists (data shift writes a new folder)");
  ShiftOptions so;
  LF_ASSIGN_OR_RETURN(so.kinds, parse_shift_kinds(o.kinds));
  so.probability = o.probability;
  so.min_kinds = o.min_kinds;
  LF_ASSIGN_OR_RETURN(LabelMap lm, LabelMap::parse(o.malignant));
  LF_ASSIGN_OR_RETURN(Dataset ds, load_dataset(o.dataset, lm, o.seed));
  std::vector<size_t> idx;
  if (o.splits.empty()) {
    for (size_t i = 0; i < ds.records.size(); ++i) idx.push_back(i);
  } else {
    LF_ASSIGN_OR_RETURN(idx, select_split(ds.records, o.splits, o.split));
  }
  for (size_t i : idx)
    if (ds.records[i].image_path.empty())
      return Status::error("data shift: " + o.dataset +
                           " has no image files (phantoms: write them with 'data phantom' first)");
  if (idx.empty()) return Status::error("data shift: no images in split '" + o.split + "'");
  LF_ASSIGN_OR_RETURN(PartialDir part, PartialDir::begin(o.out, "data shift"));
  const std::string& tmp = part.path();
  LF_RETURN_IF_ERROR(make_dirs(tmp + "/images"));
  std::vector<nlohmann::json> rec(idx.size());
  std::vector<std::string> err(idx.size());
  std::vector<bool> ok(idx.size(), false);
  Progress prog("shift", static_cast<int64_t>(idx.size()), "img");
  parallel_for_each(
      static_cast<int64_t>(idx.size()), o.threads,
      [&](int64_t k) {
        const Record& r = ds.records[idx[k]];
        auto img = read_image(r.image_path);
        if (!img.ok()) {
          err[k] = img.status().message();
        } else {
          std::mt19937_64 rng(
              derive_seed(o.seed, Stream::kShift, std::stoull(hash_bytes(r.id), nullptr, 16)));
          nlohmann::json applied;
          cv::Mat out = apply_shift(*img, so, rng, &applied);
          const std::string file = tmp + "/images/" + r.id + ".png";
          std::vector<uint8_t> buf;
          if (!cv::imencode(".png", out, buf)) {
            err[k] = file + ": PNG encoding failed";
          } else {
            Status st = write_file_atomic(file, std::string(buf.begin(), buf.end()));
            if (!st.ok()) err[k] = st.message();
            ok[k] = st.ok();
            rec[k] = {{"image_id", r.id}, {"source", r.image_path}, {"shifts", applied}};
          }
        }
      },
      &prog, 16);
  prog.finish();
  std::ostringstream csv, jl;
  csv << "lesion_id,image_id,dx,dx_type,age,sex,localization\n";
  std::map<std::string, int64_t> per_kind;
  int64_t n_ok = 0, skipped = 0;
  for (size_t k = 0; k < idx.size(); ++k) {
    if (!ok[k]) {
      log_warn("data shift: skipped " + err[k]);
      ++skipped;
      continue;
    }
    const Record& r = ds.records[idx[k]];
    char age[32] = "";
    if (r.age >= 0) std::snprintf(age, sizeof age, "%.1f", r.age);
    csv << csv_escape(r.lesion_id.empty() ? r.group_key() : r.lesion_id) << "," << csv_escape(r.id)
        << "," << r.dx << "," << csv_escape(r.dx_type.empty() ? "unknown" : r.dx_type) << "," << age
        << "," << r.sex << "," << csv_escape(r.site) << "\n";
    jl << rec[k].dump() << "\n";
    for (auto& [kind, p] : rec[k]["shifts"].items()) per_kind[kind]++;
    ++n_ok;
  }
  if (n_ok == 0)
    return Status::error("data shift: none of the " + std::to_string(idx.size()) +
                         " images could be read");
  LF_RETURN_IF_ERROR(write_file_atomic(tmp + "/HAM10000_metadata.csv", csv.str()));
  LF_RETURN_IF_ERROR(write_file_atomic(tmp + "/shift.jsonl", jl.str()));
  LF_RETURN_IF_ERROR(part.commit());
  return nlohmann::json{
      {"out", o.out}, {"images", n_ok}, {"skipped", skipped}, {"per_kind", per_kind}};
}

}  // namespace lf
