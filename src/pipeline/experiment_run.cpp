// The real-vs-synthetic experiment (see experiment_run.h).
#include "pipeline/experiment_run.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "lesionflow/io.h"
#include "lesionflow/log.h"
#include "lesionflow/stop.h"
#include "pipeline/audit_run.h"
#include "pipeline/classify_runs.h"
#include "pipeline/generator_runs.h"
#include "synth/synth.h"

namespace lf {
namespace {

template <class T>
T cfg_get(const nlohmann::json& j, const char* key, T def) {
  return j.contains(key) ? j[key].get<T>() : def;
}

// One generator training option from a JSON value (object key or flag value given as a string).
Status set_train_option(TrainRunOptions& t, const std::string& key, const nlohmann::json& v) {
  auto num = [&](auto& field) -> Status {
    using F = std::decay_t<decltype(field)>;
    try {
      if (v.is_string())
        field = static_cast<F>(std::stod(v.get<std::string>()));
      else
        field = v.get<F>();
    } catch (const std::exception&) {
      return Status::error("generator." + key + ": not a number: " + v.dump());
    }
    return Status::ok_status();
  };
  auto str = [&](std::string& field) -> Status {
    if (!v.is_string())
      return Status::error("generator." + key + ": expected a string, got " + v.dump());
    field = v.get<std::string>();
    return Status::ok_status();
  };
  if (key == "preset") return str(t.preset);
  if (key == "prediction") return str(t.prediction);
  if (key == "objective") return str(t.objective);
  if (key == "ae") return str(t.ae);
  if (key == "tokenizer") return str(t.tokenizer);
  if (key == "vocab") return num(t.vocab);
  if (key == "patch") return num(t.patch);
  if (key == "steps") return num(t.loop.steps);
  if (key == "batch") return num(t.loop.batch);
  if (key == "lr") return num(t.loop.lr);
  if (key == "max_minutes") return num(t.loop.max_minutes);
  if (key == "ckpt_every") return num(t.loop.ckpt_every);
  if (key == "keep_every") return num(t.loop.keep_every);
  if (key == "sample_every") return num(t.loop.sample_every);
  if (key == "log_every") return num(t.loop.log_every);
  if (key == "val_every") return num(t.loop.val_every);
  if (key == "freeze_text") {
    t.freeze_text = v.is_boolean() ? v.get<bool>() : true;
    return Status::ok_status();
  }
  return Status::error("generator: unknown training option '" + key +
                       "' (known: preset, objective, prediction, ae, tokenizer, vocab, patch, "
                       "steps, batch, lr, max_minutes, "
                       "ckpt_every, keep_every, sample_every, log_every, val_every, freeze_text)");
}

// What each key of an experiment config must hold. A key the runner does not read, or a value of
// the wrong type, is an error naming the file, the key path and what is expected; keys that
// start with '_' are comments.
enum class Kind { kString, kNumber, kInt, kBool, kObject, kStrings, kNumbers, kInts, kArray };

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::kString:
      return "a string";
    case Kind::kNumber:
      return "a number";
    case Kind::kInt:
      return "an integer";
    case Kind::kBool:
      return "true or false";
    case Kind::kObject:
      return "an object";
    case Kind::kStrings:
      return "an array of strings";
    case Kind::kNumbers:
      return "an array of numbers";
    case Kind::kInts:
      return "an array of integers";
    case Kind::kArray:
      return "an array";
  }
  return "?";
}

bool holds(const nlohmann::json& v, Kind k) {
  auto all = [&](auto pred) { return v.is_array() && std::all_of(v.begin(), v.end(), pred); };
  switch (k) {
    case Kind::kString:
      return v.is_string();
    case Kind::kNumber:
      return v.is_number();
    case Kind::kInt:
      return v.is_number_integer();
    case Kind::kBool:
      return v.is_boolean();
    case Kind::kObject:
      return v.is_object();
    case Kind::kStrings:
      return all([](const nlohmann::json& e) { return e.is_string(); });
    case Kind::kNumbers:
      return all([](const nlohmann::json& e) { return e.is_number(); });
    case Kind::kInts:
      return all([](const nlohmann::json& e) { return e.is_number_integer(); });
    case Kind::kArray:
      return v.is_array();
  }
  return false;
}

using Schema = std::vector<std::pair<const char*, Kind>>;

Status check_section(const nlohmann::json& j, const Schema& schema, const std::string& file,
                     const std::string& prefix) {
  if (!j.is_object())
    return Status::error(file + ": '" + (prefix.empty() ? "(top level)" : prefix) +
                         "' must be a JSON object");
  for (auto& [key, v] : j.items()) {
    if (!key.empty() && key[0] == '_') continue;
    auto it = std::find_if(schema.begin(), schema.end(), [&](auto& e) { return key == e.first; });
    if (it == schema.end()) {
      std::string known;
      for (auto& e : schema) known += (known.empty() ? "" : ", ") + std::string(e.first);
      return Status::error(file + ": unknown key '" + prefix + key + "' (known here: " + known +
                           ")");
    }
    if (!holds(v, it->second))
      return Status::error(file + ": '" + prefix + key + "' must be " + kind_name(it->second) +
                           ", found " + v.dump());
  }
  return Status::ok_status();
}

Status validate_experiment_config(const nlohmann::json& c, const std::string& file) {
  using K = Kind;
  LF_RETURN_IF_ERROR(check_section(c,
                                   {{"data", K::kString},
                                    {"splits", K::kString},
                                    {"captions", K::kString},
                                    {"out", K::kString},
                                    {"budget_minutes", K::kNumber},
                                    {"test_datasets", K::kStrings},
                                    {"generator", K::kObject},
                                    {"synth", K::kObject},
                                    {"classifier", K::kObject},
                                    {"arms", K::kStrings},
                                    {"real_sizes", K::kInts},
                                    {"seeds", K::kInts},
                                    {"synthetic_weight", K::kNumber},
                                    {"synthetic_mix_size", K::kInt},
                                    {"synthetic_mix_ratios", K::kNumbers},
                                    {"filter_confidence", K::kNumber},
                                    {"equal_steps_control", K::kBool}},
                                   file, ""));
  if (c.contains("generator"))
    LF_RETURN_IF_ERROR(check_section(
        c["generator"],
        {{"checkpoint", K::kString}, {"train", K::kObject}, {"train_args", K::kStrings}}, file,
        "generator."));
  if (c.contains("synth"))
    LF_RETURN_IF_ERROR(check_section(c["synth"],
                                     {{"total", K::kInt},
                                      {"balance", K::kString},
                                      {"flatten", K::kNumber},
                                      {"sampler", K::kString},
                                      {"steps", K::kInt},
                                      {"shift", K::kNumber},
                                      {"eta", K::kNumber},
                                      {"cfg", K::kNumber},
                                      {"cfg_interval", K::kNumbers},
                                      {"guide", K::kString},
                                      {"strength", K::kNumber},
                                      {"vary", K::kStrings},
                                      {"omit", K::kStrings},
                                      {"emphasis", K::kString},
                                      {"emphasis_strength", K::kNumber},
                                      {"adapters", K::kObject},
                                      {"batch", K::kInt}},
                                     file, "synth."));
  if (c.contains("synth") && c["synth"].contains("adapters"))
    for (const auto& [dx, spec] : c["synth"]["adapters"].items())
      if (!spec.is_string() || spec.get<std::string>().empty())
        return Status::error(file + ": synth.adapters." + dx +
                             " must be the adapter file (\"FILE\" or \"FILE:STRENGTH\"), not " +
                             spec.dump());
  if (c.contains("classifier"))
    LF_RETURN_IF_ERROR(check_section(c["classifier"],
                                     {{"archs", K::kStrings},
                                      {"width", K::kInt},
                                      {"epochs", K::kInt},
                                      {"batch", K::kInt},
                                      {"lr", K::kNumber},
                                      {"vit_lr", K::kNumber},
                                      {"patience", K::kInt},
                                      {"shift_augment", K::kNumber},
                                      {"colour_constancy", K::kString},
                                      {"extra_archs", K::kString},
                                      {"classes", K::kString},
                                      {"images_per_second_estimate", K::kNumber}},
                                     file, "classifier."));
  if (c.contains("classifier") && c["classifier"].contains("extra_archs") &&
      c["classifier"]["extra_archs"] != "once" && c["classifier"]["extra_archs"] != "all")
    return Status::error(file + ": classifier.extra_archs must be \"once\" or \"all\", not " +
                         c["classifier"]["extra_archs"].dump());
  if (c.contains("classifier") && c["classifier"].contains("classes") &&
      c["classifier"]["classes"] != "binary" && c["classifier"]["classes"] != "dx")
    return Status::error(file + ": classifier.classes must be \"binary\" or \"dx\", not " +
                         c["classifier"]["classes"].dump());
  if (c.contains("synth") && c["synth"].contains("vary"))
    for (const auto& v : c["synth"]["vary"])
      if (!v.is_string() || !is_vary_attribute(v.get<std::string>()))
        return Status::error(file + ": synth.vary takes \"size\" and/or \"skin\", not " + v.dump());
  if (c.contains("synth") && c["synth"].contains("emphasis") &&
      !is_emphasis(c["synth"]["emphasis"].get<std::string>()))
    return Status::error(file +
                         ": synth.emphasis must be \"none\", \"abcd-discordant\" or "
                         "\"abcd-discordant-malignant\", not " +
                         c["synth"]["emphasis"].dump());
  if (c.contains("synth") && c["synth"].contains("emphasis_strength") &&
      !(c["synth"]["emphasis_strength"].get<double>() >= 0))
    return Status::error(file + ": synth.emphasis_strength must be >= 0, not " +
                         c["synth"]["emphasis_strength"].dump());
  if (c.contains("synthetic_mix_ratios")) {
    for (const auto& r : c["synthetic_mix_ratios"])
      if (!(r.get<double>() > 0))
        return Status::error(file + ": synthetic_mix_ratios must be > 0, not " + r.dump());
    if (c.contains("synthetic_mix_size"))
      return Status::error(file + ": give synthetic_mix_size or synthetic_mix_ratios, not both");
    if (c.value("equal_steps_control", false))
      return Status::error(file +
                           ": equal_steps_control matches one mix; not with synthetic_mix_ratios");
  }
  return Status::ok_status();
}

}  // namespace

Result<nlohmann::json> read_experiment_config(const std::string& path) {
  LF_ASSIGN_OR_RETURN(std::string txt, read_file(path));
  try {
    return nlohmann::json::parse(txt);
  } catch (const std::exception& e) {
    return Status::error(path + ": not valid JSON: " + e.what());
  }
}

Result<TrainRunOptions> experiment_train_options(const nlohmann::json& gj) {
  TrainRunOptions t;
  if (gj.contains("train")) {
    if (!gj["train"].is_object())
      return Status::error("generator.train must be an object of training options");
    for (auto& [k, v] : gj["train"].items()) LF_RETURN_IF_ERROR(set_train_option(t, k, v));
  }
  auto args = gj.value("train_args", nlohmann::json::array());
  for (size_t i = 0; i < args.size(); ++i) {
    std::string flag = args[i].get<std::string>();
    if (flag.rfind("--", 0) != 0)
      return Status::error("generator.train_args: expected a --flag, got '" + flag + "'");
    std::string key = flag.substr(2);
    std::replace(key.begin(), key.end(), '-', '_');
    if (key == "freeze_text") {
      t.freeze_text = true;
      continue;
    }
    if (i + 1 >= args.size())
      return Status::error("generator.train_args: " + flag + " lacks its value");
    LF_RETURN_IF_ERROR(set_train_option(t, key, args[++i]));
  }
  return t;
}

Result<nlohmann::json> run_experiment(const ExperimentOptions& o) {
  const nlohmann::json& c = o.config;
  LF_RETURN_IF_ERROR(validate_experiment_config(c, o.config_name));
  const std::string out = !o.out.empty() ? o.out : cfg_get<std::string>(c, "out", "");
  if (out.empty()) return Status::error(o.config_name + ": no \"out\" directory (or give --out)");
  LF_RETURN_IF_ERROR(make_dirs(out));
  auto t_start = std::chrono::steady_clock::now();
  auto minutes = [&]() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count() / 60;
  };
  double budget =
      o.budget_minutes > 0 ? o.budget_minutes : cfg_get<double>(c, "budget_minutes", 0.0);
  LF_RETURN_IF_ERROR(write_file_atomic(
      out + "/config.json",
      nlohmann::json{{"config", c}, {"command_line", o.command_line}}.dump(2) + "\n"));
  // 1. data
  const std::string data = cfg_get<std::string>(c, "data", ""),
                    splits = cfg_get<std::string>(c, "splits", ""),
                    captions = cfg_get<std::string>(c, "captions", "");
  LF_ASSIGN_OR_RETURN(RealData real, load_real_data(data, splits, captions));
  std::vector<std::string> tests = o.test_datasets;
  for (auto& t : c.value("test_datasets", nlohmann::json::array()))
    tests.push_back(t.get<std::string>());
  LF_ASSIGN_OR_RETURN(auto extra, load_test_datasets(tests, real.ps.size));
  // 2. generator: a given checkpoint, or train one (resumably) in this process.
  auto gj = c.value("generator", nlohmann::json::object());
  std::string gen_path = cfg_get<std::string>(gj, "checkpoint", "");
  if (gen_path.empty()) {
    gen_path = out + "/generator/ema.safetensors";
    if (!file_exists(out + "/generator/done")) {
      LF_ASSIGN_OR_RETURN(TrainRunOptions t, experiment_train_options(gj));
      t.data = {data, captions, splits};
      t.out = out + "/generator";
      t.seed = o.seed;
      t.loop.resume = file_exists(out + "/generator/state.bin");
      log_info("experiment: training the generator " + t.to_json().dump());
      auto r = run_generator_training(t);
      if (!r.ok())
        return Status::error("experiment: generator training failed: " + r.status().message());
      if (stop_requested())
        return Status::error(std::string("experiment: ") + stop_signal_name() +
                             " during generator training; its checkpoint is saved: rerun the "
                             "same command to resume");
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
    pc.vary = cfg_get<std::vector<std::string>>(sj, "vary", {});
    pc.omit = cfg_get<std::vector<std::string>>(sj, "omit", {});
    pc.emphasis = cfg_get<std::string>(sj, "emphasis", "none");
    pc.emphasis_strength = cfg_get<double>(sj, "emphasis_strength", 1.0);
    pc.seed = o.seed;
    nlohmann::json summary;
    LF_ASSIGN_OR_RETURN(auto plan, plan_synthetic(train, real.captions, pc, &summary));
    LF_ASSIGN_OR_RETURN(LoadedGenerator gen, load_generator(gen_path));
    SynthGenConfig sc;
    LF_ASSIGN_OR_RETURN(sc.gen.sampler.method,
                        parse_sampler(cfg_get<std::string>(sj, "sampler", "euler")));
    sc.gen.sampler.steps = cfg_get<int>(sj, "steps", 12);
    sc.gen.sampler.shift = cfg_get<double>(sj, "shift", 1.0);
    sc.gen.sampler.eta = cfg_get<double>(sj, "eta", 0.0);
    sc.gen.cfg_scale = cfg_get<double>(sj, "cfg", 3.0);
    auto ci = cfg_get<std::vector<double>>(sj, "cfg_interval", {0.0, 1.0});
    if (ci.size() != 2)
      return Status::error(o.config_name + ": synth.cfg_interval must be [lo, hi]");
    sc.gen.cfg_t_lo = ci[0];
    sc.gen.cfg_t_hi = ci[1];
    sc.gen.batch = cfg_get<int>(sj, "batch", 16);
    sc.gen.sampler.start = cfg_get<double>(sj, "strength", 1.0);
    sc.gen.guide = cfg_get<std::string>(sj, "guide", "");
    LF_RETURN_IF_ERROR(check_generate_config(sc.gen, o.config_name + ": synth"));
    LF_RETURN_IF_ERROR(load_guide(sc.gen, gen));
    sc.out = syn_dir;
    sc.generator_path = gen_path;
    if (sc.gen.sampler.start < 1.0) {
      LF_ASSIGN_OR_RETURN(sc.init, source_images(gen, data, real.ps));
    }
    std::map<std::string, std::string> adapter_for;
    const nlohmann::json adapters = sj.value("adapters", nlohmann::json::object());
    for (const auto& [dx, spec] : adapters.items()) adapter_for[dx] = spec.get<std::string>();
    LF_ASSIGN_OR_RETURN(nlohmann::json by_dx, use_dx_adapters(gen, adapter_for, plan, sc));
    if (!by_dx.empty()) summary["adapters_by_dx"] = by_dx;
    auto t0 = std::chrono::steady_clock::now();
    LF_ASSIGN_OR_RETURN(int64_t made, generate_synthetic(gen, plan, sc, summary));
    if (made > 0) {
      double sec = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      LF_RETURN_IF_ERROR(write_file_atomic(
          syn_dir + "/speed.json",
          nlohmann::json{{"images", made}, {"seconds", sec}, {"images_per_second", made / sec}}
                  .dump() +
              "\n"));
    }
  }
  int64_t skipped = 0;
  LF_ASSIGN_OR_RETURN(LabeledSet syn, load_synthetic(syn_dir, real.ps.size, 1.0f, &skipped));
  // 4. classifiers over arms x real sizes x seeds x architectures.
  auto cj = c.value("classifier", nlohmann::json::object());
  std::vector<std::string> arms =
      cfg_get<std::vector<std::string>>(c, "arms", {"real", "real+synthetic", "synthetic"});
  std::vector<int64_t> sizes = cfg_get<std::vector<int64_t>>(c, "real_sizes", {500});
  std::vector<uint64_t> seeds = cfg_get<std::vector<uint64_t>>(c, "seeds", {0, 1, 2});
  std::vector<std::string> archs = cfg_get<std::vector<std::string>>(cj, "archs", {"cnn"});
  {
    auto real_at = std::find(arms.begin(), arms.end(), "real"),
         filt_at = std::find(arms.begin(), arms.end(), "real+filtered");
    if (filt_at != arms.end() && (real_at == arms.end() || real_at > filt_at))
      return Status::error(o.config_name +
                           ": arm 'real+filtered' needs the arm 'real' listed before it (its "
                           "real-only classifier does the filtering)");
  }
  struct Planned {
    ClsJob job;
    double cost;  // training images per epoch
  };
  // The synthetic:real ratio sweep: each mixing arm once per ratio (synthetic images = ratio x
  // the real images of the cell), named "arm (R.RRx)".
  // (validate_experiment_config checked them: > 0, not with synthetic_mix_size)
  const auto ratios = cfg_get<std::vector<double>>(c, "synthetic_mix_ratios", {});
  auto is_mixing = [](const std::string& a) {
    return a == "real+synthetic" || a == "real+filtered" || a == "synthetic-then-real";
  };
  // Architectures after the first run every cell with extra_archs "all", else once.
  const bool extra_all = cfg_get<std::string>(cj, "extra_archs", std::string("once")) == "all";
  // The diagnosis task: one output per dx of the training split, epochs picked on the validation
  // balanced accuracy; P(malignant) (the malignant classes' summed probability) is evaluated too.
  std::vector<int> dx_malignant;
  const std::vector<std::string> dx_cls =
      cfg_get<std::string>(cj, "classes", std::string("binary")) == "dx"
          ? dx_classes(real, &dx_malignant)
          : std::vector<std::string>{};
  std::vector<Planned> jobs;
  // The equal-steps control: each real-only job again with its epochs (and patience) scaled by
  // (real + mixed synthetic images) / real images, so it takes as many optimizer steps as the
  // real+synthetic job of its cell. Without it a mixing arm also trains longer than real-only,
  // and at few real images that alone can look like a gain from the synthetic images. Planned
  // after every other job.
  const bool equal_steps = c.value("equal_steps_control", false);
  const int64_t mix_size = std::min<int64_t>(
      syn.count(), cfg_get<int64_t>(c, "synthetic_mix_size", -1) > 0
                       ? cfg_get<int64_t>(c, "synthetic_mix_size", -1)
                       : syn.count());  // synthetic images of a real+synthetic job
  std::vector<Planned> control;
  for (auto& arch : archs)
    for (auto n : sizes)
      for (auto& arm : arms)
        for (double ratio : is_mixing(arm) && !ratios.empty() ? ratios : std::vector<double>{0})
          for (auto s : seeds) {
            // The extra architectures are measured once (first size, first seed) unless
            // classifier.extra_archs is "all".
            if (!extra_all && arch != archs[0] && (n != sizes[0] || s != seeds[0])) continue;
            ClsJob j;
            j.arm = arm;
            j.real_size = n;
            j.seed = s;
            LF_ASSIGN_OR_RETURN(j.model.arch, parse_arch(arch));
            j.model.width = cfg_get<int>(cj, "width", 32);
            j.model.classes = dx_cls;
            j.model.malignant = dx_malignant;
            j.train.epochs = cfg_get<int>(cj, "epochs", 20);
            j.train.batch = cfg_get<int>(cj, "batch", 64);
            j.train.lr =
                cfg_get<double>(cj, arch == "vit" ? "vit_lr" : "lr", arch == "vit" ? 5e-4 : 1e-3);
            j.train.patience = cfg_get<int>(cj, "patience", 5);
            j.train.shift_augment = cfg_get<double>(cj, "shift_augment", 0.0);
            {
              const auto cc = cfg_get<std::string>(cj, "colour_constancy", std::string("none"));
              if (cc != "none" && cc != "shades-of-gray")
                return Status::error(o.config_name +
                                     ": classifier.colour_constancy must be none or "
                                     "shades-of-gray, not '" +
                                     cc + "'");
              j.model.shades_of_gray = cc == "shades-of-gray";
            }
            j.train.resume = true;
            j.synthetic_weight = cfg_get<double>(c, "synthetic_weight", 1.0);
            if (is_mixing(arm)) j.synthetic_size = cfg_get<int64_t>(c, "synthetic_mix_size", -1);
            char ratio_tag[32] = "";
            const int64_t n_real = n > 0 ? std::min<int64_t>(n, real.train.size())
                                         : static_cast<int64_t>(real.train.size());
            if (ratio > 0) {
              j.synthetic_size = std::max<int64_t>(1, std::llround(ratio * n_real));
              j.synthetic_ratio = ratio;
              char label[64];
              std::snprintf(label, sizeof label, "%s (%.2fx)", arm.c_str(), ratio);
              j.label = label;
              std::snprintf(ratio_tag, sizeof ratio_tag, "_r%.2f", ratio);
              if (j.synthetic_size > syn.count() && s == seeds[0])
                log_warn(o.config_name + ": " + j.label + " at " + std::to_string(n_real) +
                         " real images asks for " + std::to_string(j.synthetic_size) +
                         " synthetic images; the set has " + std::to_string(syn.count()) +
                         " (all are used; raise synth.total)");
            }
            auto job_dir = [&](const std::string& a, const char* tag) {
              char dir[192];
              std::snprintf(dir, sizeof dir, "/classifiers/%s_%s_n%lld_s%llu%s", arch.c_str(),
                            a == "real+synthetic"        ? "realsyn"
                            : a == "real+filtered"       ? "realfilt"
                            : a == "synthetic-then-real" ? "pretrain"
                                                         : a.c_str(),
                            (long long)n, (unsigned long long)s, tag);
              return out + dir;
            };
            j.train.out = job_dir(arm, ratio_tag);
            if (arm == "real+filtered") {  // filtered by the real-only classifier of this cell
              j.filter_with = job_dir("real", "");
              j.filter_confidence = cfg_get<double>(c, "filter_confidence", 0.9);
            }
            const double mix = j.synthetic_size > 0
                                   ? std::min<double>(j.synthetic_size, syn.count())
                                   : static_cast<double>(syn.count());
            const double cost = (arm == "synthetic" ? std::min<double>(n, syn.count()) : n) +
                                (is_mixing(arm) ? mix : 0);
            const double arch_cost = cost * (arch == "vit" ? 3.0 : 1.0);
            jobs.push_back({j, arch_cost});
            if (equal_steps && arm == "real") {
              const double f = static_cast<double>(n_real + mix_size) / n_real;
              j.train.epochs = static_cast<int>(std::lround(j.train.epochs * f));
              j.train.patience = static_cast<int>(std::lround(j.train.patience * f));
              j.label = "real (equal steps)";
              j.train.out = job_dir("realeq", "");
              control.push_back({j, arch_cost * f});
            }
          }
  jobs.insert(jobs.end(), control.begin(), control.end());
  // Budget: scale the epochs of every job by one factor so the planned work fits what is left.
  // What the budget did, for the summary and the report (the epochs of a scaled run are not the
  // config's).
  nlohmann::json budget_info;
  if (budget > 0) {
    double left = budget - minutes();
    double work = 0;
    for (auto& p : jobs)
      if (!file_exists(p.job.train.out + "/result.json")) work += p.cost * p.job.train.epochs;
    double ips = cfg_get<double>(cj, "images_per_second_estimate", 250.0);
    double need = work / ips / 60;
    double f = 1.0;
    const int planned = jobs.empty() ? 0 : jobs.front().job.train.epochs;
    if (need > left && left > 0) {
      f = left / need;
      for (auto& p : jobs)
        p.job.train.epochs = std::max(2, static_cast<int>(p.job.train.epochs * f));
      log_info("experiment: budget " + std::to_string(left) + " min for ~" + std::to_string(need) +
               " min of training: epochs scaled by " + std::to_string(f));
    }
    budget_info = {{"minutes", budget},
                   {"minutes_before_classifiers", minutes()},
                   {"left_for_classifiers", left},
                   {"estimated_classifier_minutes", need},
                   {"epoch_factor", f},
                   {"epochs_planned", planned}};
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
      if (p.job.arm == "real" && arch_name(p.job.model.arch) == archs[0] &&
          p.job.real_size == *std::max_element(sizes.begin(), sizes.end())) {
        ref_dir = p.job.train.out;
        break;
      }
    if (!ref_dir.empty()) {
      // The audit is a function of the feature extractor, the synthetic set and the real data:
      // a rerun that finds the same inputs (file hashes) reuses it. kAuditVersion changes when
      // the audit's measures do.
      constexpr int kAuditVersion = 1;
      const std::string ref = ref_dir + "/best.safetensors", audit_path = out + "/audit.json";
      nlohmann::json inputs = {{"audit_version", kAuditVersion}, {"synthetic_images", syn.count()}};
      for (const auto& [key, path] : std::vector<std::pair<std::string, std::string>>{
               {"feature_extractor", ref},
               {"manifest", syn_dir + "/manifest.jsonl"},
               {"splits", splits},
               {"captions", captions}}) {
        if (path.empty()) continue;
        LF_ASSIGN_OR_RETURN(std::string h, hash_file(path));
        inputs[key] = h;
      }
      inputs["real_images"] = real.ps.count();
      if (file_exists(audit_path)) {
        auto prev = nlohmann::json::parse(*read_file(audit_path), nullptr, false);
        if (!prev.is_discarded() && prev.value("inputs", nlohmann::json()) == inputs) {
          audit = std::move(prev);
          log_info("audit: " + audit_path + " has the same inputs; reused");
        }
      }
      if (audit.is_null()) {
        LF_ASSIGN_OR_RETURN(LoadedClassifier lc, load_classifier(ref));
        LF_ASSIGN_OR_RETURN(audit, audit_loaded(lc, real, syn, syn_dir));
        audit["feature_extractor"] = ref;
        audit["inputs"] = inputs;
        LF_RETURN_IF_ERROR(write_file_atomic(audit_path, audit.dump(2) + "\n"));
      }
    }
  }
  // The epochs the results were trained with, from the results themselves: a rerun that finds
  // every job done must not report the config's epochs for jobs an earlier budget scaled.
  std::set<int> used_epochs;
  for (auto& r : results) used_epochs.insert(r["train"].value("epochs", 0));
  const nlohmann::json epochs_used =
      used_epochs.size() == 1 ? nlohmann::json(*used_epochs.begin()) : nlohmann::json(used_epochs);
  if (budget_info.is_object()) budget_info["epochs_used"] = epochs_used;
  LF_ASSIGN_OR_RETURN(nlohmann::json paired, paired_arm_comparisons(results));
  if (equal_steps) {
    LF_ASSIGN_OR_RETURN(paired["vs_equal_steps"],
                        paired_arm_comparisons(results, "real (equal steps)"));
  }
  nlohmann::json summary = {
      {"config", c},
      {"command_line", o.command_line},
      {"generator", gen_path},
      {"synthetic", {{"dir", syn_dir}, {"images", syn.count()}, {"skipped", skipped}}},
      {"cells", aggregate_results(results)},
      {"paired", paired},
      {"runs", results},
      {"audit", audit},
      {"minutes", minutes()},
      {"budget", budget_info},
      {"classifier_epochs", {{"planned", cfg_get<int>(cj, "epochs", 20)}, {"used", epochs_used}}},
      {"out", out}};
  LF_RETURN_IF_ERROR(write_file_atomic(out + "/summary.json", summary.dump(2) + "\n"));
  return summary;
}

}  // namespace lf
