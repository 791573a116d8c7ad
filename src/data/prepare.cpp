// Prepared cache: decode once, fit (crop/pad) and resize to a fixed square, store as one
// safetensors file + records.jsonl.
#include <chrono>
#include <fstream>
#include <opencv2/core.hpp>
#include <opencv2/imgproc.hpp>
#include <sstream>

#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/parallel.h"
#include "lesionflow/phantom.h"
#include "lesionflow/record_pixels.h"

namespace lf {

cv::Mat fit_square(const cv::Mat& img, FitMode mode, int size, bool is_mask) {
  cv::Mat sq;
  int h = img.rows, w = img.cols;
  if (mode == FitMode::kCrop) {
    int s = std::min(h, w);
    sq = img(cv::Rect((w - s) / 2, (h - s) / 2, s, s));
  } else {
    int s = std::max(h, w);
    cv::copyMakeBorder(img, sq, (s - h) / 2, s - h - (s - h) / 2, (s - w) / 2, s - w - (s - w) / 2,
                       is_mask ? cv::BORDER_CONSTANT : cv::BORDER_REPLICATE);
  }
  cv::Mat out;
  if (sq.rows == size && sq.cols == size) return sq.clone();
  int interp = is_mask ? cv::INTER_NEAREST : (sq.rows > size ? cv::INTER_AREA : cv::INTER_LINEAR);
  cv::resize(sq, out, cv::Size(size, size), 0, 0, interp);
  return out;
}

Result<PreparedSet> prepare(const Dataset& ds, const PrepareConfig& cfg, PrepareStats* stats) {
  if (cfg.size < 8 || cfg.size > 1024) return Status::error("prepare: size must be in 8..1024");
  auto t0 = std::chrono::steady_clock::now();
  const int64_t n = static_cast<int64_t>(ds.records.size());
  const int S = cfg.size;
  std::vector<uint8_t> images(n * S * S * 3), masks(n * S * S, 0), has_mask(n, 0), ok(n, 0);
  std::vector<std::string> errors(n);
  Progress prog("prepare", n, "img");
  parallel_for_each(
      n, cfg.threads,
      [&](int64_t i) {
        const Record& r = ds.records[i];
        cv::Mat rgb, mask;
        Status st = load_record_pixels(r, S, &rgb, &mask);
        if (!st.ok()) {
          errors[i] = st.message();
        } else if (r.source != "phantom") {
          rgb = fit_square(rgb, cfg.fit, S, false);
          if (!mask.empty()) mask = fit_square(mask, cfg.fit, S, true);
        }
        if (!rgb.empty()) {
          std::memcpy(images.data() + i * S * S * 3, rgb.data, S * S * 3);
          if (!mask.empty()) {
            std::memcpy(masks.data() + i * S * S, mask.data, S * S);
            has_mask[i] = 1;
          }
          ok[i] = 1;
        }
      },
      &prog);
  // Compact: drop failed images, keep order.
  PreparedSet ps;
  ps.size = S;
  PrepareStats st;
  for (int64_t i = 0; i < n; ++i) {
    if (!ok[i]) {
      st.skipped++;
      st.skipped_messages.push_back(errors[i]);
      log_warn("skipped: " + errors[i]);
      continue;
    }
    int64_t j = st.ok++;
    if (j != i) {
      std::memmove(images.data() + j * S * S * 3, images.data() + i * S * S * 3, S * S * 3);
      std::memmove(masks.data() + j * S * S, masks.data() + i * S * S, S * S);
    }
    has_mask[j] = has_mask[i];
    if (!has_mask[j] && ds.records[i].source != "phantom") st.masks_missing++;
    ps.records.push_back(ds.records[i]);
  }
  if (st.ok == 0 && st.skipped > 0)
    return Status::error(ds.root + ": none of the " + std::to_string(st.skipped) +
                         " images could be read (first: " + st.skipped_messages.front() + ")");
  images.resize(st.ok * S * S * 3);
  masks.resize(st.ok * S * S);
  has_mask.resize(st.ok);
  ps.images = std::move(images);
  ps.masks = std::move(masks);
  ps.has_mask = std::move(has_mask);
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  prog.finish(st.skipped ? "(" + std::to_string(st.skipped) + " skipped)" : "");
  if (stats) *stats = st;
  return ps;
}

Status save_prepared(const std::string& dir, const PreparedSet& ps, const PrepareStats& stats) {
  LF_RETURN_IF_ERROR(make_dirs(dir));
  const int64_t n = ps.count(), S = ps.size;
  SafeTensors st;
  st.tensors["images"] =
      RawTensor{DType::kU8, {n, S, S, 3}, std::string(ps.images.begin(), ps.images.end())};
  st.tensors["masks"] =
      RawTensor{DType::kU8, {n, S, S}, std::string(ps.masks.begin(), ps.masks.end())};
  st.tensors["has_mask"] =
      RawTensor{DType::kU8, {n}, std::string(ps.has_mask.begin(), ps.has_mask.end())};
  st.metadata["format"] = "lesionflow.prepared.v1";
  st.metadata["size"] = std::to_string(S);
  LF_RETURN_IF_ERROR(save_safetensors(dir + "/images.safetensors", st));
  std::ostringstream os;
  for (const auto& r : ps.records) os << record_to_json(r).dump() << '\n';
  LF_RETURN_IF_ERROR(write_file_atomic(dir + "/records.jsonl", os.str()));
  nlohmann::json summary = {{"count", n},
                            {"size", S},
                            {"ok", stats.ok},
                            {"skipped", stats.skipped},
                            {"skipped_messages", stats.skipped_messages},
                            {"masks_missing", stats.masks_missing},
                            {"seconds", stats.seconds}};
  return write_file_atomic(dir + "/prepare.json", summary.dump(2) + "\n");
}

Result<PreparedSet> load_prepared(const std::string& dir) {
  LF_ASSIGN_OR_RETURN(SafeTensors st, load_safetensors(dir + "/images.safetensors"));
  const std::string f = dir + "/images.safetensors";
  if (st.metadata["format"] != "lesionflow.prepared.v1")
    return Status::error(f + ": not a lesionflow prepared cache (format '" + st.metadata["format"] +
                         "')");
  for (const char* k : {"images", "masks", "has_mask"})
    if (!st.tensors.count(k)) return Status::error(f + ": missing tensor '" + k + "'");
  PreparedSet ps;
  const auto& im = st.tensors["images"];
  if (im.shape.size() != 4 || im.shape[3] != 3 || im.shape[1] != im.shape[2])
    return Status::error(f + ": 'images' must have shape [N,S,S,3]");
  ps.size = static_cast<int>(im.shape[1]);
  ps.images.assign(im.data.begin(), im.data.end());
  ps.masks.assign(st.tensors["masks"].data.begin(), st.tensors["masks"].data.end());
  ps.has_mask.assign(st.tensors["has_mask"].data.begin(), st.tensors["has_mask"].data.end());
  LF_ASSIGN_OR_RETURN(auto lines, read_jsonl(dir + "/records.jsonl"));
  for (const auto& j : lines) ps.records.push_back(record_from_json(j));
  if (ps.count() != im.shape[0])
    return Status::error(dir + ": records.jsonl has " + std::to_string(ps.count()) +
                         " records but images has " + std::to_string(im.shape[0]));
  return ps;
}

}  // namespace lf
