// lesionflow classify train|eval, lesionflow synth, lesionflow experiment.
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <opencv2/imgproc.hpp>

#include "classify/experiment.h"
#include "cli.h"
#include "eval/audit.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/record_pixels.h"
#include "pipeline/audit_run.h"
#include "synth/synth.h"

namespace lf::cli {
namespace {

// ---- classify ---------------------------------------------------------------------------
struct ClassifyOptions {
  std::string data, splits, captions, synthetic, arm = "real", arch = "cnn", out, model;
  std::string classes = "binary";  // binary | dx
  std::vector<std::string> test_datasets;
  int64_t real_size = -1;
  int epochs = 20, batch = 64, width = 32, patience = 5;
  double lr = 1e-3, synthetic_weight = 1.0, max_minutes = 0;
  bool resume = false;
};

ClassifierConfig model_config(const std::string& arch, int width) {
  ClassifierConfig c;
  c.arch = arch;
  c.width = width;
  return c;
}

Result<std::vector<NamedSet>> load_extra_tests(const std::vector<std::string>& specs, int size) {
  std::vector<NamedSet> out;
  for (auto& s : specs) {
    LF_ASSIGN_OR_RETURN(NamedSet n, load_test_dataset(s, size));
    out.push_back(std::move(n));
  }
  return out;
}

void print_eval(const std::string& what, const nlohmann::json& t) {
  std::printf("%s: AUC %.3f [%.3f, %.3f]  accuracy %.3f  balanced accuracy %.3f  sensitivity %.3f  specificity %.3f",
              what.c_str(), t["auc"]["value"].get<double>(), t["auc"]["lo"].get<double>(), t["auc"]["hi"].get<double>(),
              t["accuracy"]["value"].get<double>(), t["balanced_accuracy"]["value"].get<double>(),
              t["sensitivity"]["value"].get<double>(), t["specificity"]["value"].get<double>());
  if (t.contains("worst_group"))
    std::printf("  worst group %s=%s %.3f", t["worst_group"]["attribute"].get<std::string>().c_str(),
                t["worst_group"]["group"].get<std::string>().c_str(), t["worst_group"]["balanced_accuracy"].get<double>());
  std::printf("\n");
}

Status run_classify_train(const ClassifyOptions& o, const GlobalOptions& g) {
  if (o.out.empty()) return Status::error("classify train: --out DIR is required");
  LF_ASSIGN_OR_RETURN(RealData real, load_real_data(o.data, o.splits, o.captions));
  LabeledSet syn;
  if (!o.synthetic.empty()) {
    int64_t skipped = 0;
    LF_ASSIGN_OR_RETURN(syn, load_synthetic(o.synthetic, real.ps.size, 1.0f, &skipped));
    if (skipped) log_warn(o.synthetic + ": " + std::to_string(skipped) + " synthetic images skipped");
  }
  LF_ASSIGN_OR_RETURN(auto extra, load_extra_tests(o.test_datasets, real.ps.size));
  ClsJob job;
  job.arm = o.arm;
  job.real_size = o.real_size;
  job.seed = g.seed;
  job.model = model_config(o.arch, o.width);
  if (o.classes == "dx") {  // one output per diagnosis of the training split; malignant ones flagged
    std::map<std::string, int> dx_label;
    for (size_t i : real.train) dx_label[real.ps.records[i].dx] = std::max(dx_label[real.ps.records[i].dx], real.ps.records[i].label);
    for (auto& [dx, l] : dx_label) {
      job.model.classes.push_back(dx);
      job.model.malignant.push_back(l == 1);
    }
    log_info("dx classifier over " + std::to_string(job.model.classes.size()) + " classes");
  }
  job.train.epochs = o.epochs;
  job.train.batch = o.batch;
  job.train.lr = o.lr;
  job.train.patience = o.patience;
  job.train.max_minutes = o.max_minutes;
  job.train.resume = o.resume;
  job.train.out = o.out;
  job.synthetic_weight = o.synthetic_weight;
  if (!o.resume) std::filesystem::remove(o.out + "/result.json");
  LF_ASSIGN_OR_RETURN(nlohmann::json r, run_cls_job(job, real, syn.count() ? &syn : nullptr, extra));
  if (g.json) emit_json(g, r);
  else {
    print_eval("test (" + std::to_string(r["test"]["n"].get<int>()) + " images)", r["test"]);
    if (r.contains("test_dx"))
      std::printf("test dx: accuracy %.3f  balanced accuracy %.3f (%d classes)\n", r["test_dx"]["accuracy"].get<double>(),
                  r["test_dx"]["balanced_accuracy"].get<double>(), static_cast<int>(r["test_dx"]["recall_per_class"].size()));
    for (auto& [k, v] : r["extra_tests"].items()) print_eval(k, v);
    std::printf("-> %s/best.safetensors, %s/result.json\n", o.out.c_str(), o.out.c_str());
  }
  return Status::ok_status();
}

Status run_classify_eval(const ClassifyOptions& o, const GlobalOptions& g) {
  if (o.model.empty()) return Status::error("classify eval: --model best.safetensors is required");
  LF_ASSIGN_OR_RETURN(LoadedClassifier lc, load_classifier(o.model));
  std::vector<NamedSet> sets;
  if (!o.data.empty()) {
    LF_ASSIGN_OR_RETURN(RealData real, load_real_data(o.data, o.splits, o.captions));
    sets.push_back({"test split of " + o.data, labeled_from_prepared(real.ps, real.test, &real.captions)});
  }
  LF_ASSIGN_OR_RETURN(auto extra, load_extra_tests(o.test_datasets, lc.model->config().image_size));
  for (auto& e : extra) sets.push_back(std::move(e));
  if (sets.empty()) return Status::error("classify eval: give --data/--splits or --test-dataset");
  nlohmann::json out = nlohmann::json::object();
  for (auto& s : sets) {
    out[s.name] = evaluation_json(predict_malignant(lc.model, s.set), s.set, lc.threshold, g.seed);
    if (!g.json) print_eval(s.name, out[s.name]);
  }
  if (!o.out.empty()) LF_RETURN_IF_ERROR(write_file_atomic(o.out, out.dump(2) + "\n"));
  emit_json(g, out);
  return Status::ok_status();
}

// ---- fd: distance of a folder of generated images to (a subset of) a real set ---------------
struct FdOptions {
  std::string features, data, splits, split = "train", images;
  std::vector<std::string> filter;
};

Status run_fd(const FdOptions& o, const GlobalOptions& g) {
  const std::string feat = o.features.empty() ? shipped_model_path(kReferenceNetworkFile) : o.features;
  if (feat.empty()) return Status::error("fd: give --features (no shipped reference network found)");
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
  double fd = frechet_distance(fg, fr);
  // Pixel statistics: per-channel mean/std distance (0..1 scale), model-free.
  auto stats = [](const LabeledSet& s) {
    auto t = torch::from_blob(const_cast<uint8_t*>(s.pixels.data()), {s.count() * s.size * s.size, 3}, torch::kUInt8).to(torch::kFloat32) / 255;
    return std::make_pair(t.mean(0), t.std(0));
  };
  auto [mr, sr] = stats(real);
  auto [mg, sg] = stats(gen);
  double pix = ((mr - mg).abs().sum() + (sr - sg).abs().sum()).item<double>();
  // The feature classifier's own verdict: mean P(malignant) of each side (how "malignant-looking"
  // the generated images are, next to the real images they are compared with).
  auto mean_of = [](const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / std::max<size_t>(1, v.size()); };
  double pm_gen = mean_of(predict_malignant(lc.model, gen)), pm_real = mean_of(predict_malignant(lc.model, real));
  nlohmann::json j = {{"fd", fd}, {"pixel_stat_distance", pix}, {"real_images", real.count()}, {"generated_images", gen.count()},
                      {"p_malignant_generated", pm_gen}, {"p_malignant_real", pm_real},
                      {"skipped", bad}, {"filter", o.filter}, {"features", o.features}};
  if (g.json) emit_json(g, j);
  else std::printf("FD %.4f, pixel-statistics distance %.4f, mean P(malignant) %.3f generated vs %.3f real (%lld generated vs %lld real images)\n",
                   fd, pix, pm_gen, pm_real, (long long)gen.count(), (long long)real.count());
  return Status::ok_status();
}

// ---- synth -------------------------------------------------------------------------------
struct SynthOptions {
  std::string generator, data, splits, captions, out, balance = "label", sampler = "euler";
  int64_t total = 1000;
  double flatten = 0.5, cfg = 3.0, shift = 1.0;
  std::vector<double> cfg_interval{0.0, 1.0};
  int steps = 12, batch = 16;
  bool plan_only = false;
  SamplerFlags given;  // which sampler flags were given (set by CLI)
};

Status run_synth(const SynthOptions& o, const GlobalOptions& g) {
  if (o.out.empty()) return Status::error("synth: --out DIR is required");
  if (o.generator.empty() && !o.plan_only) return Status::error("synth: --generator CHECKPOINT is required");
  LF_ASSIGN_OR_RETURN(RealData real, load_real_data(o.data, o.splits, o.captions));
  std::vector<Record> train;
  for (auto i : real.train) train.push_back(real.ps.records[i]);
  SynthPlanConfig pc;
  pc.total = o.total;
  pc.balance = o.balance;
  pc.flatten = o.flatten;
  pc.seed = g.seed;
  nlohmann::json summary;
  LF_ASSIGN_OR_RETURN(auto plan, plan_synthetic(train, real.captions, pc, &summary));
  LF_RETURN_IF_ERROR(make_dirs(o.out));
  if (o.plan_only) {
    LF_RETURN_IF_ERROR(write_file_atomic(o.out + "/plan.json", summary.dump(2) + "\n"));
    std::printf("planned %zu images -> %s/plan.json\n", plan.size(), o.out.c_str());
    return Status::ok_status();
  }
  LF_ASSIGN_OR_RETURN(LoadedGenerator gen, load_generator(o.generator));
  SynthGenConfig sc;
  sc.gen.sampler.method = o.sampler;
  sc.gen.sampler.steps = o.steps;
  sc.gen.sampler.shift = o.shift;
  sc.gen.cfg_scale = o.cfg;
  apply_recommended_sampling(gen.metadata, o.given, sc.gen);  // a distilled student's settings for flags not given
  sc.gen.cfg_t_lo = o.cfg_interval[0];
  sc.gen.cfg_t_hi = o.cfg_interval[1];
  sc.gen.batch = o.batch;
  sc.out = o.out;
  sc.generator_path = o.generator;
  auto t0 = std::chrono::steady_clock::now();
  LF_ASSIGN_OR_RETURN(int64_t made, generate_synthetic(gen, plan, sc, summary));
  double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json j = {{"planned", plan.size()}, {"generated_now", made}, {"seconds", sec},
                      {"images_per_second", made / std::max(sec, 1e-9)}, {"manifest", o.out + "/manifest.jsonl"}};
  if (g.json) emit_json(g, j);
  else std::printf("synth: %lld generated now (%.2f img/s), %zu planned -> %s/manifest.jsonl\n", (long long)made,
                   made / std::max(sec, 1e-9), plan.size(), o.out.c_str());
  return Status::ok_status();
}

// ---- experiment --------------------------------------------------------------------------
struct ExperimentOptions {
  std::string config, out;
  std::vector<std::string> test_datasets;
  double budget_minutes = 0;
};

template <class T>
T cfg_get(const nlohmann::json& j, const char* key, T def) {
  return j.contains(key) ? j[key].get<T>() : def;
}

Status run_experiment(const ExperimentOptions& o, const GlobalOptions& g) {
  if (o.config.empty()) return Status::error("experiment: --config FILE is required");
  LF_ASSIGN_OR_RETURN(std::string txt, read_file(o.config));
  nlohmann::json c;
  try {
    c = nlohmann::json::parse(txt);
  } catch (const std::exception& e) {
    return Status::error(o.config + ": not valid JSON: " + e.what());
  }
  const std::string out = !o.out.empty() ? o.out : cfg_get<std::string>(c, "out", "");
  if (out.empty()) return Status::error(o.config + ": no \"out\" directory (or give --out)");
  LF_RETURN_IF_ERROR(make_dirs(out));
  auto t_start = std::chrono::steady_clock::now();
  auto minutes = [&]() { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count() / 60; };
  double budget = o.budget_minutes > 0 ? o.budget_minutes : cfg_get<double>(c, "budget_minutes", 0.0);
  LF_RETURN_IF_ERROR(write_file_atomic(out + "/config.json", nlohmann::json{{"config", c}, {"command_line", g.command_line}}.dump(2) + "\n"));
  // 1. data
  const std::string data = cfg_get<std::string>(c, "data", ""), splits = cfg_get<std::string>(c, "splits", ""),
                    captions = cfg_get<std::string>(c, "captions", "");
  LF_ASSIGN_OR_RETURN(RealData real, load_real_data(data, splits, captions));
  std::vector<std::string> tests = o.test_datasets;
  for (auto& t : c.value("test_datasets", nlohmann::json::array())) tests.push_back(t.get<std::string>());
  LF_ASSIGN_OR_RETURN(auto extra, load_extra_tests(tests, real.ps.size));
  // 2. generator: a given checkpoint, or train one (resumably) with `lesionflow train`.
  auto gj = c.value("generator", nlohmann::json::object());
  std::string gen_path = cfg_get<std::string>(gj, "checkpoint", "");
  if (gen_path.empty()) {
    gen_path = out + "/generator/ema.safetensors";
    if (!file_exists(out + "/generator/done")) {
      std::string cmd = "\"" + self_exe() + "\" train --data \"" + data + "\" --splits \"" + splits + "\"" +
                        (captions.empty() ? "" : " --captions \"" + captions + "\"") + " --out \"" + out + "/generator\"" +
                        " --seed " + std::to_string(g.seed) + " --threads " + std::to_string(g.threads);
      for (auto& a : gj.value("train_args", nlohmann::json::array())) cmd += " " + a.get<std::string>();
      if (file_exists(out + "/generator/state.bin")) cmd += " --resume";
      log_info("experiment: training the generator: " + cmd);
      if (std::system(cmd.c_str()) != 0) return Status::error("experiment: generator training failed (" + cmd + ")");
      LF_RETURN_IF_ERROR(write_file_atomic(out + "/generator/done", "ok\n"));
    }
  }
  // 3. synthetic set (resumable)
  auto sj = c.value("synth", nlohmann::json::object());
  const std::string syn_dir = out + "/synthetic";
  {
    std::vector<Record> train;
    for (auto i : real.train) train.push_back(real.ps.records[i]);
    SynthPlanConfig pc;
    pc.total = cfg_get<int64_t>(sj, "total", 1000);
    pc.balance = cfg_get<std::string>(sj, "balance", "label");
    pc.flatten = cfg_get<double>(sj, "flatten", 0.5);
    pc.seed = g.seed;
    nlohmann::json summary;
    LF_ASSIGN_OR_RETURN(auto plan, plan_synthetic(train, real.captions, pc, &summary));
    LF_ASSIGN_OR_RETURN(LoadedGenerator gen, load_generator(gen_path));
    SynthGenConfig sc;
    sc.gen.sampler.method = cfg_get<std::string>(sj, "sampler", "euler");
    sc.gen.sampler.steps = cfg_get<int>(sj, "steps", 12);
    sc.gen.sampler.shift = cfg_get<double>(sj, "shift", 1.0);
    sc.gen.cfg_scale = cfg_get<double>(sj, "cfg", 3.0);
    auto ci = cfg_get<std::vector<double>>(sj, "cfg_interval", {0.0, 1.0});
    if (ci.size() != 2) return Status::error(o.config + ": synth.cfg_interval must be [lo, hi]");
    sc.gen.cfg_t_lo = ci[0];
    sc.gen.cfg_t_hi = ci[1];
    sc.gen.batch = cfg_get<int>(sj, "batch", 16);
    sc.out = syn_dir;
    sc.generator_path = gen_path;
    auto t0 = std::chrono::steady_clock::now();
    LF_ASSIGN_OR_RETURN(int64_t made, generate_synthetic(gen, plan, sc, summary));
    if (made > 0) {
      double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      LF_RETURN_IF_ERROR(write_file_atomic(syn_dir + "/speed.json", nlohmann::json{{"images", made}, {"seconds", sec}, {"images_per_second", made / sec}}.dump() + "\n"));
    }
  }
  int64_t skipped = 0;
  LF_ASSIGN_OR_RETURN(LabeledSet syn, load_synthetic(syn_dir, real.ps.size, 1.0f, &skipped));
  // 4. classifiers over arms x real sizes x seeds x architectures.
  auto cj = c.value("classifier", nlohmann::json::object());
  std::vector<std::string> arms = cfg_get<std::vector<std::string>>(c, "arms", {"real", "real+synthetic", "synthetic"});
  std::vector<int64_t> sizes = cfg_get<std::vector<int64_t>>(c, "real_sizes", {500});
  std::vector<uint64_t> seeds = cfg_get<std::vector<uint64_t>>(c, "seeds", {0, 1, 2});
  std::vector<std::string> archs = cfg_get<std::vector<std::string>>(cj, "archs", {"cnn"});
  struct Planned {
    ClsJob job;
    double cost;  // training images per epoch
  };
  std::vector<Planned> jobs;
  for (auto& arch : archs)
    for (auto n : sizes)
      for (auto& arm : arms)
        for (auto s : seeds) {
          // The extra architectures are measured once (first size, first seed), as the budget allows.
          if (arch != archs[0] && (n != sizes[0] || s != seeds[0])) continue;
          ClsJob j;
          j.arm = arm;
          j.real_size = n;
          j.seed = s;
          j.model = model_config(arch, cfg_get<int>(cj, "width", 32));
          j.train.epochs = cfg_get<int>(cj, "epochs", 20);
          j.train.batch = cfg_get<int>(cj, "batch", 64);
          j.train.lr = cfg_get<double>(cj, arch == "vit" ? "vit_lr" : "lr", arch == "vit" ? 5e-4 : 1e-3);
          j.train.patience = cfg_get<int>(cj, "patience", 5);
          j.train.resume = true;
          j.synthetic_weight = cfg_get<double>(c, "synthetic_weight", 1.0);
          char dir[160];
          std::snprintf(dir, sizeof dir, "/classifiers/%s_%s_n%lld_s%llu", arch.c_str(),
                        arm == "real+synthetic" ? "realsyn" : arm.c_str(), (long long)n, (unsigned long long)s);
          j.train.out = out + dir;
          double cost = (arm == "synthetic" ? std::min<double>(n, syn.count()) : n) + (arm == "real+synthetic" ? syn.count() : 0);
          jobs.push_back({j, cost * (arch == "vit" ? 3.0 : 1.0)});
        }
  // Budget: scale the epochs of every job by one factor so the planned work fits what is left.
  if (budget > 0) {
    double left = budget - minutes();
    double work = 0;
    for (auto& p : jobs)
      if (!file_exists(p.job.train.out + "/result.json")) work += p.cost * p.job.train.epochs;
    double ips = cfg_get<double>(cj, "images_per_second_estimate", 250.0);
    double need = work / ips / 60;
    if (need > left && left > 0) {
      double f = left / need;
      for (auto& p : jobs) p.job.train.epochs = std::max(2, static_cast<int>(p.job.train.epochs * f));
      log_info("experiment: budget " + std::to_string(left) + " min for ~" + std::to_string(need) +
               " min of training: epochs scaled by " + std::to_string(f));
    }
  }
  std::vector<nlohmann::json> results;
  Progress prog("experiment", static_cast<int64_t>(jobs.size()), "job");
  for (size_t k = 0; k < jobs.size(); ++k) {
    LF_ASSIGN_OR_RETURN(nlohmann::json r, run_cls_job(jobs[k].job, real, &syn, extra));
    results.push_back(r);
    prog.update(static_cast<int64_t>(k + 1));
  }
  // 5. audit with the first real-only classifier of the largest real size as feature extractor.
  nlohmann::json audit;
  {
    std::string ref_dir;
    for (auto& p : jobs)
      if (p.job.arm == "real" && p.job.model.arch == archs[0] && p.job.real_size == *std::max_element(sizes.begin(), sizes.end())) {
        ref_dir = p.job.train.out;
        break;
      }
    if (!ref_dir.empty()) {
      LF_ASSIGN_OR_RETURN(LoadedClassifier lc, load_classifier(ref_dir + "/best.safetensors"));
      LF_ASSIGN_OR_RETURN(audit, audit_loaded(lc, real, syn, syn_dir));
      audit["feature_extractor"] = ref_dir + "/best.safetensors";
      LF_RETURN_IF_ERROR(write_file_atomic(out + "/audit.json", audit.dump(2) + "\n"));
    }
  }
  nlohmann::json summary = {{"config", c}, {"command_line", g.command_line}, {"generator", gen_path},
                            {"synthetic", {{"dir", syn_dir}, {"images", syn.count()}, {"skipped", skipped}}},
                            {"cells", aggregate_results(results)}, {"runs", results}, {"audit", audit},
                            {"minutes", minutes()}};
  LF_RETURN_IF_ERROR(write_file_atomic(out + "/summary.json", summary.dump(2) + "\n"));
  if (g.json) emit_json(g, summary["cells"]);
  else {
    std::printf("%-5s %-15s %6s %6s  %-15s %-15s %-15s %-15s\n", "arch", "arm", "real", "synth", "AUC", "accuracy",
                "bal. accuracy", "worst-group BA");
    for (auto& cell : summary["cells"]) {
      auto f = [&](const char* m) {
        char b[32];
        std::snprintf(b, sizeof b, "%.3f±%.3f", cell[m]["mean"].is_number() ? cell[m]["mean"].get<double>() : NAN,
                      cell[m]["sd"].is_number() ? cell[m]["sd"].get<double>() : NAN);
        return std::string(b);
      };
      std::printf("%-5s %-15s %6lld %6lld  %-15s %-15s %-15s %-15s\n", cell["arch"].get<std::string>().c_str(),
                  cell["arm"].get<std::string>().c_str(), (long long)cell["real_images"].get<int64_t>(),
                  (long long)cell["synthetic_size"].get<int64_t>(), f("auc").c_str(), f("accuracy").c_str(),
                  f("balanced_accuracy").c_str(), f("worst_group_balanced_accuracy").c_str());
    }
    std::printf("experiment summary: %s/summary.json (%.1f min)\n", out.c_str(), minutes());
  }
  return Status::ok_status();
}

}  // namespace

void add_classify(CLI::App& app, GlobalOptions& g, Runner* run) {
  static ClassifyOptions o;
  auto* c = app.add_subcommand("classify", "train and evaluate skin-lesion classifiers (CNN or ViT)");
  c->require_subcommand(1);
  auto* t = c->add_subcommand("train", "train on real and/or synthetic images, evaluate on the test split");
  t->add_option("--data", o.data, "prepared cache of the real dataset")->required();
  t->add_option("--splits", o.splits, "splits CSV (train/val/test, lesion-grouped)")->required();
  t->add_option("--captions", o.captions, "captions.jsonl (skin-tone subgroups)");
  t->add_option("--synthetic", o.synthetic, "synthetic set directory (manifest.jsonl)");
  t->add_option("--synthetic-weight", o.synthetic_weight, "loss weight of synthetic images")->capture_default_str();
  t->add_option("--arm", o.arm, "real | real+synthetic | synthetic")->capture_default_str();
  t->add_option("--real-size", o.real_size, "real training images (-1: all)")->capture_default_str();
  t->add_option("--arch", o.arch, "cnn | vit")->capture_default_str();
  t->add_option("--classes", o.classes, "binary (benign/malignant) | dx (one output per diagnosis: the reference feature network)")->capture_default_str()->check(CLI::IsMember({"binary", "dx"}));
  t->add_option("--width", o.width, "CNN width")->capture_default_str();
  t->add_option("--epochs", o.epochs, "epochs")->capture_default_str();
  t->add_option("--batch", o.batch, "batch size")->capture_default_str();
  t->add_option("--lr", o.lr, "peak learning rate")->capture_default_str();
  t->add_option("--patience", o.patience, "early-stopping patience (epochs)")->capture_default_str();
  t->add_option("--max-minutes", o.max_minutes, "time budget")->capture_default_str();
  t->add_option("--test-dataset", o.test_datasets, "extra test datasets (evaluated, never trained on)");
  t->add_flag("--resume", o.resume, "continue an interrupted run");
  t->add_option("--out", o.out, "run directory")->required();
  t->callback([&g, run]() { *run = [&g]() { return run_classify_train(o, g); }; });
  auto* e = c->add_subcommand("eval", "evaluate a trained classifier");
  e->add_option("--model", o.model, "best.safetensors")->required();
  e->add_option("--data", o.data, "prepared cache (its test split is evaluated)");
  e->add_option("--splits", o.splits, "splits CSV");
  e->add_option("--captions", o.captions, "captions.jsonl (skin-tone subgroups)");
  e->add_option("--test-dataset", o.test_datasets, "extra test datasets");
  e->add_option("--out", o.out, "metrics JSON");
  e->callback([&g, run]() { *run = [&g]() { return run_classify_eval(o, g); }; });

  static FdOptions f;
  auto* fdc = app.add_subcommand("fd", "Frechet distance of generated PNGs to (a filtered subset of) a real set");
  fdc->add_option("--features", f.features, "classifier whose penultimate layer gives the features (default: the shipped reference network)");
  fdc->add_option("--data", f.data, "prepared cache of the real set")->required();
  fdc->add_option("--splits", f.splits, "splits CSV (default: all images)");
  fdc->add_option("--split", f.split, "split name")->capture_default_str();
  fdc->add_option("--filter", f.filter, "dx=, site=, sex= or age=VALUE (repeatable)");
  fdc->add_option("--images", f.images, "directory of generated PNGs")->required();
  fdc->callback([&g, run]() { *run = [&g]() { return run_fd(f, g); }; });

  static SynthOptions s;
  auto* y = app.add_subcommand("synth", "plan and generate a balanced synthetic training set");
  y->add_option("--generator", s.generator, "generator checkpoint (ema.safetensors)");
  y->add_option("--data", s.data, "prepared cache of the real dataset")->required();
  y->add_option("--splits", s.splits, "splits CSV (the plan follows the train split)")->required();
  y->add_option("--captions", s.captions, "captions.jsonl (prompts are drawn from these)");
  y->add_option("--total", s.total, "synthetic images")->capture_default_str();
  y->add_option("--balance", s.balance, "label | dx (equal classes) | fill-label | fill-dx (top up the short classes) | none")->capture_default_str();
  y->add_option("--flatten", s.flatten, "cell share ~ real_count^flatten within a class")->capture_default_str();
  // Sampler flags not given: a distilled checkpoint's recommended settings, else these defaults.
  y->add_option("--sampler", s.sampler, "euler | heun | ab2 | dpm2m")->check(CLI::IsMember({"euler", "heun", "ab2", "dpm2m"}))
      ->capture_default_str()->each([](const std::string&) { s.given.sampler = true; });
  y->add_option("--steps", s.steps, "sampling steps")->capture_default_str()->each([](const std::string&) { s.given.steps = true; });
  y->add_option("--cfg", s.cfg, "classifier-free guidance scale")->capture_default_str()->each([](const std::string&) { s.given.cfg = true; });
  y->add_option("--cfg-interval", s.cfg_interval, "guide only while LO <= t <= HI (t = 1 is noise)")
      ->expected(2)->check(CLI::Range(0.0, 1.0))->capture_default_str();
  y->add_option("--shift", s.shift, "timestep shift")->capture_default_str()->each([](const std::string&) { s.given.shift = true; });
  y->add_option("--batch", s.batch, "images per forward batch")->capture_default_str();
  y->add_flag("--plan-only", s.plan_only, "write plan.json and stop");
  y->add_option("--out", s.out, "output directory")->required();
  y->callback([&g, run]() { *run = [&g]() { return run_synth(s, g); }; });

  static ExperimentOptions x;
  auto* ex = app.add_subcommand("experiment", "generator -> synthetic set -> classifiers (real, real+synthetic, synthetic) -> audit");
  ex->add_option("--config", x.config, "experiment JSON (see docs/experiment.md)")->required();
  ex->add_option("--out", x.out, "output directory (overrides the config)");
  ex->add_option("--test-dataset", x.test_datasets, "extra test datasets (evaluated, never trained on)");
  ex->add_option("--budget-minutes", x.budget_minutes, "scale classifier epochs to fit")->capture_default_str();
  ex->callback([&g, run]() { *run = [&g]() { return run_experiment(x, g); }; });
}

}  // namespace lf::cli
