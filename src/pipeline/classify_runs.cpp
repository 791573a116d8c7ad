// Classifier, Frechet-distance and synthetic-set stages (see classify_runs.h).
#include "pipeline/classify_runs.h"

#include <chrono>
#include <filesystem>
#include <numeric>
#include <opencv2/imgproc.hpp>

#include "core/device.h"
#include "eval/audit.h"
#include "lesionflow/image_metrics.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/record_pixels.h"
#include "pipeline/audit_run.h"
#include "pipeline/generator_runs.h"

namespace lf {

Result<std::vector<NamedSet>> load_test_datasets(const std::vector<std::string>& specs, int size) {
  std::vector<NamedSet> out;
  for (auto& s : specs) {
    LF_ASSIGN_OR_RETURN(NamedSet n, load_test_dataset(s, size));
    out.push_back(std::move(n));
  }
  return out;
}

Result<nlohmann::json> run_classify_train(const ClassifyTrainOptions& o) {
  if (o.out.empty()) return Status::error("classify train: --out DIR is required");
  LF_ASSIGN_OR_RETURN(RealData real, load_real_data(o.data, o.splits, o.captions));
  LabeledSet syn;
  if (!o.synthetic.empty()) {
    int64_t skipped = 0;
    LF_ASSIGN_OR_RETURN(syn, load_synthetic(o.synthetic, real.ps.size, 1.0f, &skipped));
    if (skipped)
      log_warn(o.synthetic + ": " + std::to_string(skipped) + " synthetic images skipped");
  }
  LF_ASSIGN_OR_RETURN(auto extra, load_test_datasets(o.test_datasets, real.ps.size));
  ClsJob job;
  job.arm = o.arm;
  job.real_size = o.real_size;
  job.seed = o.seed;
  LF_ASSIGN_OR_RETURN(job.model.arch, parse_arch(o.arch));
  job.model.width = o.width;
  if (o.classes == "dx") {  // one output per diagnosis of the training split; malignant flagged
    job.model.classes = dx_classes(real, &job.model.malignant);
    log_info("dx classifier over " + std::to_string(job.model.classes.size()) + " classes");
  } else if (o.classes != "binary") {
    return Status::error("classify train: --classes must be binary or dx, not '" + o.classes + "'");
  }
  job.train.epochs = o.epochs;
  job.train.batch = o.batch;
  job.train.lr = o.lr;
  job.train.patience = o.patience;
  job.train.shift_augment = o.shift_augment;
  if (o.colour_constancy != "none" && o.colour_constancy != "shades-of-gray")
    return Status::error(
        "classify train: --colour-constancy must be none or shades-of-gray, not '" +
        o.colour_constancy + "'");
  job.model.shades_of_gray = o.colour_constancy == "shades-of-gray";
  job.train.max_minutes = o.max_minutes;
  job.train.resume = o.resume;
  job.train.out = o.out;
  LF_ASSIGN_OR_RETURN(job.train.device, parse_device(o.device));
  job.train.dist = o.dist;
  job.synthetic_weight = o.synthetic_weight;
  job.filter_with = o.filter_with;
  job.filter_confidence = o.filter_confidence;
  if (!o.resume) std::filesystem::remove(o.out + "/result.json");
  return run_cls_job(job, real, syn.count() ? &syn : nullptr, extra);
}

Result<nlohmann::json> run_classify_eval(const ClassifyEvalOptions& o) {
  if (o.model.empty()) return Status::error("classify eval: --model best.safetensors is required");
  LF_ASSIGN_OR_RETURN(torch::Device dev, parse_device(o.device));
  LF_ASSIGN_OR_RETURN(LoadedClassifier lc, load_classifier(o.model));
  lc.model->to(dev);
  std::vector<NamedSet> sets;
  if (!o.data.empty()) {
    if (o.split != "test" && o.split != "val" && o.split != "train")
      return Status::error("classify eval: --split must be test, val or train (got '" + o.split +
                           "')");
    LF_ASSIGN_OR_RETURN(RealData real, load_real_data(o.data, o.splits, o.captions));
    const auto& rows = o.split == "test" ? real.test : o.split == "val" ? real.val : real.train;
    if (rows.empty()) return Status::error(o.splits + ": the " + o.split + " split is empty");
    sets.push_back(
        {o.split + " split of " + o.data, labeled_from_prepared(real.ps, rows, &real.captions)});
  }
  LF_ASSIGN_OR_RETURN(auto extra,
                      load_test_datasets(o.test_datasets, lc.model->config().image_size));
  for (auto& e : extra) sets.push_back(std::move(e));
  if (sets.empty()) return Status::error("classify eval: give --data/--splits or --test-dataset");
  nlohmann::json out = nlohmann::json::object();
  std::string csv;
  for (auto& s : sets) {
    const std::vector<double> scores = predict_malignant(lc.model, s.set);
    out[s.name] = evaluation_json(scores, s.set, lc.threshold, o.seed, lc.platt);
    csv += scores_csv(s.set, scores, s.name, lc.platt, csv.empty());
    const auto& classes = lc.model->config().classes;
    if (!classes.empty()) {  // a dx model: the diagnosis task on the images of its diagnoses
      int64_t other = 0;
      for (int64_t i = 0; i < s.set.count(); ++i) {
        auto g = s.set.groups[i].find("dx");
        s.set.cls[i] = g == s.set.groups[i].end() ? -1 : dx_class_index(classes, g->second);
        other += s.set.cls[i] < 0;
      }
      const torch::Tensor prob =
          predict_proba(lc.model, s.set.pixels.data(), s.set.count(), s.set.size);
      LF_ASSIGN_OR_RETURN(out[s.name]["dx"], dx_evaluation(prob, s.set, classes));
      out[s.name]["dx"]["images_of_other_diagnoses"] = other;  // left out of the dx metrics
    }
  }
  if (!o.out.empty()) LF_RETURN_IF_ERROR(write_file_atomic(o.out, out.dump(2) + "\n"));
  if (!o.scores.empty()) LF_RETURN_IF_ERROR(write_file_atomic(o.scores, csv));
  return out;
}

Result<nlohmann::json> run_classify_calibrate(const ClassifyCalibrateOptions& o) {
  if (o.model.empty() || o.dataset.empty() || o.out.empty())
    return Status::error("classify calibrate: --model, --dataset and --out are required");
  LF_ASSIGN_OR_RETURN(torch::Device dev, parse_device(o.device));
  LF_ASSIGN_OR_RETURN(LoadedClassifier lc, load_classifier(o.model));
  if (!lc.model->config().classes.empty())
    return Status::error(o.model + ": a dx classifier; calibrate takes a benign/malignant one");
  lc.model->to(dev);
  LF_ASSIGN_OR_RETURN(NamedSet set, load_test_dataset(o.dataset, lc.model->config().image_size));
  const std::vector<int>& y = set.set.labels;
  const int positives = static_cast<int>(std::count(y.begin(), y.end(), 1));
  if (positives == 0 || positives == static_cast<int>(y.size()))
    return Status::error(o.dataset + ": calibration needs benign and malignant images (got " +
                         std::to_string(positives) + " malignant of " + std::to_string(y.size()) +
                         ")");
  const std::vector<double> s = predict_malignant(lc.model, set.set);
  const Platt p = fit_platt(s, y);
  std::vector<double> before = s, after(s.size());
  if (lc.platt)
    for (auto& v : before) v = lc.platt->apply(v);
  for (size_t i = 0; i < s.size(); ++i) after[i] = p.apply(s[i]);
  const Calibration cb = calibration(before, y), ca = calibration(after, y);
  std::map<std::string, std::string> meta = lc.metadata;
  for (const char* k : {"format", "config", "threshold", "classes", "platt_a", "platt_b"})
    meta.erase(k);
  meta["platt_fitted_on"] = o.dataset;
  LF_RETURN_IF_ERROR(save_classifier(o.out, lc.model, lc.threshold, meta, p));
  return nlohmann::json{{"dataset", o.dataset},
                        {"n", y.size()},
                        {"positives", positives},
                        {"platt", platt_json(p)},
                        {"previous_platt", platt_json(lc.platt)},
                        {"before", {{"brier", cb.brier}, {"ece", cb.ece}}},
                        {"after", {{"brier", ca.brier}, {"ece", ca.ece}}},
                        {"out", o.out}};
}

Result<nlohmann::json> run_fd(const FdOptions& o) {
  const std::string feat =
      o.features.empty() ? shipped_model_path(kReferenceNetworkFile) : o.features;
  if (feat.empty())
    return Status::error("fd: give --features (no shipped reference network found)");
  LF_ASSIGN_OR_RETURN(LoadedClassifier lc, load_classifier(feat));
  LF_ASSIGN_OR_RETURN(PreparedSet ps, load_prepared(o.data));
  std::vector<size_t> idx;
  if (!o.splits.empty()) {
    LF_ASSIGN_OR_RETURN(idx, select_split(ps.records, o.splits, o.split));
  } else {
    idx.resize(ps.records.size());
    std::iota(idx.begin(), idx.end(), 0);
  }
  LF_RETURN_IF_ERROR(check_filters(o.filter));
  std::vector<size_t> keep;
  for (auto i : idx)
    if (record_matches(ps.records[i], o.filter)) keep.push_back(i);
  if (keep.size() < 2) return Status::error("fd: fewer than 2 real images match the filters");
  auto real = labeled_from_prepared(ps, keep, nullptr);
  LabeledSet gen;
  gen.size = ps.size;
  int64_t bad = 0;
  for (auto& e : std::filesystem::directory_iterator(o.images)) {
    if (e.path().extension() != ".png" || e.path().filename() == "grid.png") continue;
    auto img = read_image(e.path().string());
    if (!img.ok()) {
      ++bad;
      continue;
    }
    cv::Mat rgb;
    cv::cvtColor(*img, rgb, cv::COLOR_BGR2RGB);
    if (rgb.rows != ps.size) cv::resize(rgb, rgb, cv::Size(ps.size, ps.size), 0, 0, cv::INTER_AREA);
    gen.add(rgb.clone().data, 0, 1, e.path().filename().string(), "generated", {});
  }
  if (gen.count() < 2) return Status::error(o.images + ": fewer than 2 readable PNG images");
  auto fr = extract_features(lc.model, real.pixels.data(), real.count(), real.size);
  auto fg = extract_features(lc.model, gen.pixels.data(), gen.count(), gen.size);
  const FrechetParts parts = frechet_parts(fg, fr);
  const double fd = parts.total();
  // Pixel statistics: per-channel mean/std distance (0..1 scale), model-free.
  auto stats = [](const LabeledSet& s) {
    auto t = torch::from_blob(const_cast<uint8_t*>(s.pixels.data()),
                              {s.count() * s.size * s.size, 3}, torch::kUInt8)
                 .to(torch::kFloat32) /
             255;
    return std::make_pair(t.mean(0), t.std(0));
  };
  auto [mr, sr] = stats(real);
  auto [mg, sg] = stats(gen);
  double pix = ((mr - mg).abs().sum() + (sr - sg).abs().sum()).item<double>();
  // The feature classifier's own verdict: mean P(malignant) of each side (how "malignant-looking"
  // the generated images are, next to the real images they are compared with).
  auto mean_of = [](const std::vector<double>& v) {
    return std::accumulate(v.begin(), v.end(), 0.0) / std::max<size_t>(1, v.size());
  };
  double pm_gen = mean_of(predict_malignant(lc.model, gen)),
         pm_real = mean_of(predict_malignant(lc.model, real));
  // Diversity (mean MS-SSIM of pairs; lower = more varied): images of one prompt when the
  // directory is a `sample` output (samples.jsonl names each file's prompt), and random pairs of
  // the real images as the reference.
  nlohmann::json div = {{"metric", "mean MS-SSIM of image pairs (1 = identical)"}};
  {
    std::vector<const uint8_t*> rp;
    for (int64_t i = 0; i < real.count(); ++i) rp.push_back(real.image(i));
    div["real_pairs"] = mean_pairwise_ms_ssim(rp, real.size, 200, 31);
    std::map<std::string, std::string> prompt_of;
    if (file_exists(o.images + "/samples.jsonl")) {
      LF_ASSIGN_OR_RETURN(auto lines, read_jsonl(o.images + "/samples.jsonl"));
      for (auto& j : lines) prompt_of[j.value("file", "")] = j.value("prompt", "");
    }
    std::map<std::string, std::vector<const uint8_t*>> groups;
    for (int64_t i = 0; i < gen.count(); ++i) {
      auto it = prompt_of.find(gen.ids[i]);
      if (it != prompt_of.end()) groups[it->second].push_back(gen.image(i));
    }
    double sum = 0;
    int n = 0;
    for (auto& [p, v] : groups)
      if (v.size() >= 2) {
        sum += mean_pairwise_ms_ssim(v, gen.size, 200, 32);
        ++n;
      }
    div["same_prompt"] = n ? nlohmann::json(sum / n) : nlohmann::json(nullptr);
    div["prompts"] = n;
  }
  return nlohmann::json{{"fd", fd},
                        {"fd_parts", parts.to_json()},
                        {"diversity", div},
                        {"pixel_stat_distance", pix},
                        {"real_images", real.count()},
                        {"generated_images", gen.count()},
                        {"p_malignant_generated", pm_gen},
                        {"p_malignant_real", pm_real},
                        {"skipped", bad},
                        {"filter", o.filter},
                        {"features", feat}};
}

Result<nlohmann::json> run_synth_export(const SynthExportOptions& o) {
  std::map<std::string, Record> sources;
  if (!o.data.empty()) {
    LF_ASSIGN_OR_RETURN(PreparedSet ps, load_prepared(o.data));
    for (auto& r : ps.records) sources.emplace(r.id, r);
  }
  return export_synthetic(o.synthetic, o.format, o.out, sources);
}

Result<nlohmann::json> run_synth(const SynthRunOptions& o) {
  if (o.out.empty()) return Status::error("synth: --out DIR is required");
  if (o.generator.empty() && !o.plan_only)
    return Status::error("synth: --generator CHECKPOINT is required");
  if (o.plan.total < 1)
    return Status::error("synth: --total must be >= 1, got " + std::to_string(o.plan.total));
  LF_ASSIGN_OR_RETURN(RealData real, load_real_data(o.data, o.splits, o.captions));
  std::vector<Record> train;
  for (auto i : real.train) train.push_back(real.ps.records[i]);
  SynthPlanConfig pc = o.plan;
  pc.seed = o.seed;
  nlohmann::json summary;
  LF_ASSIGN_OR_RETURN(auto plan, plan_synthetic(train, real.captions, pc, &summary));
  LF_ASSIGN_OR_RETURN(auto adapter_for, parse_dx_adapter_flags(o.adapter_for));
  LF_RETURN_IF_ERROR(make_dirs(o.out));
  if (o.plan_only) {
    LF_RETURN_IF_ERROR(write_file_atomic(o.out + "/plan.json", summary.dump(2) + "\n"));
    return nlohmann::json{
        {"planned", plan.size()}, {"generated_now", 0}, {"plan", o.out + "/plan.json"}};
  }
  LF_ASSIGN_OR_RETURN(LoadedGenerator gen, load_generator(o.generator));
  SynthGenConfig sc;
  sc.gen = o.gen;
  apply_recommended_sampling(gen.metadata, o.given,
                             sc.gen);  // a distilled student's settings for flags not given
  LF_RETURN_IF_ERROR(check_generate_config(sc.gen, "synth"));
  LF_RETURN_IF_ERROR(load_guide(sc.gen, gen));
  sc.out = o.out;
  sc.save_latents = o.save_latents;
  sc.generator_path = o.generator;
  if (sc.gen.sampler.start < 1.0) {
    LF_ASSIGN_OR_RETURN(sc.init, source_images(gen, o.data, real.ps));
  }
  LF_ASSIGN_OR_RETURN(nlohmann::json by_dx, use_dx_adapters(gen, adapter_for, plan, sc));
  if (!by_dx.empty()) summary["adapters_by_dx"] = by_dx;
  auto t0 = std::chrono::steady_clock::now();
  LF_ASSIGN_OR_RETURN(int64_t made, generate_synthetic(gen, plan, sc, summary));
  double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return nlohmann::json{{"planned", plan.size()},
                        {"generated_now", made},
                        {"seconds", sec},
                        {"images_per_second", made / std::max(sec, 1e-9)},
                        {"manifest", o.out + "/manifest.jsonl"}};
}

}  // namespace lf
