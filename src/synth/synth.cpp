#include "synth/synth.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <opencv2/imgproc.hpp>
#include <random>
#include <regex>
#include <set>
#include <sstream>

#include "data/images_torch.h"
#include "lesionflow/captions.h"
#include "lesionflow/io.h"
#include "lesionflow/jsonl.h"
#include "lesionflow/log.h"
#include "lesionflow/rng.h"
#include "lesionflow/scratch.h"
#include "models/checkpoint.h"
#include "train/common.h"

namespace lf {

nlohmann::json SynthPlanConfig::to_json() const {
  return {{"total", total},       {"balance", balance},
          {"flatten", flatten},   {"attributes", attributes},
          {"vary", vary},         {"omit", omit},
          {"emphasis", emphasis}, {"emphasis_strength", emphasis_strength},
          {"seed", seed}};
}

nlohmann::json prompt_phrase_drift(const std::map<std::string, std::string>& generator_metadata,
                                   const std::vector<std::string>& prompts) {
  nlohmann::json out = {{"prompts", caption_phrase_profile(prompts)},
                        {"training", nullptr},
                        {"drifted", nlohmann::json::array()}};
  auto it = generator_metadata.find("caption_profile");
  if (it == generator_metadata.end()) return out;
  auto trained = nlohmann::json::parse(it->second, nullptr, false);
  if (trained.is_discarded() || !trained.is_object()) return out;
  out["training"] = trained;
  for (auto& [phrase, share] : out["prompts"].items()) {
    const double p = share.get<double>(), t = trained.value(phrase, 0.0);
    if (p > 2 * t + 0.02)
      out["drifted"].push_back({{"phrase", phrase}, {"prompts", p}, {"training", t}});
  }
  return out;
}

namespace {
// Allocate `total` among weights by largest remainder (deterministic tie order).
std::vector<int64_t> apportion(const std::vector<double>& w, int64_t total) {
  std::vector<int64_t> out(w.size(), 0);
  double sum = 0;
  for (double x : w) sum += x;
  if (sum <= 0 || total <= 0) return out;
  std::vector<std::pair<double, size_t>> rem;
  int64_t used = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    double q = total * w[i] / sum;
    out[i] = static_cast<int64_t>(std::floor(q));
    used += out[i];
    rem.emplace_back(q - out[i], i);
  }
  std::stable_sort(rem.begin(), rem.end(), [](auto& a, auto& b) { return a.first > b.first; });
  for (size_t k = 0; used < total; ++k, ++used) out[rem[k % rem.size()].second]++;
  return out;
}

// Water-filling: give each next image to the class with the fewest real + planned images.
std::vector<int64_t> water_fill(const std::vector<int64_t>& real, int64_t total) {
  std::vector<int64_t> add(real.size(), 0);
  for (int64_t k = 0; k < total; ++k) {
    size_t best = 0;
    for (size_t c = 1; c < real.size(); ++c)
      if (real[c] + add[c] < real[best] + add[best]) best = c;
    add[best]++;
  }
  return add;
}
// The phrases `vary` draws from, and the pattern of the phrase a caption already has.
const std::map<std::string, std::pair<std::vector<std::string>, std::regex>>& vary_phrases() {
  static const std::map<std::string, std::pair<std::vector<std::string>, std::regex>> m = {
      {"size",
       {{"small lesion", "medium-sized lesion", "large lesion"},
        std::regex("(small|medium-sized|large) lesion")}},
      {"skin",
       {{"fitzpatrick type I skin", "fitzpatrick type II skin", "fitzpatrick type III skin",
         "fitzpatrick type IV skin", "fitzpatrick type V skin", "fitzpatrick type VI skin"},
        std::regex("fitzpatrick type [IV]+ skin")}}};
  return m;
}
}  // namespace

bool is_vary_attribute(const std::string& attribute) { return vary_phrases().count(attribute) > 0; }

const std::vector<std::string>& emphasis_modes() {
  static const std::vector<std::string> modes = {"none", "abcd-discordant",
                                                 "abcd-discordant-malignant"};
  return modes;
}

bool is_emphasis(const std::string& emphasis) {
  const auto& m = emphasis_modes();
  return std::find(m.begin(), m.end(), emphasis) != m.end();
}

std::string with_attribute(const std::string& prompt, const std::string& attribute,
                           const std::string& phrase) {
  const auto& re = vary_phrases().at(attribute).second;
  if (std::regex_search(prompt, re)) return std::regex_replace(prompt, re, phrase);
  return prompt + (prompt.find(';') == std::string::npos ? "; " : ", ") + phrase;
}

Result<std::vector<SynthItem>> plan_synthetic(const std::vector<Record>& real,
                                              const std::map<std::string, nlohmann::json>& captions,
                                              const SynthPlanConfig& cfg, nlohmann::json* summary) {
  if (cfg.total <= 0) return Status::error("synth: --total must be positive");
  const bool fill = cfg.balance.rfind("fill-", 0) == 0;
  // real: the real training split's own mix of dx x subgroup cells (one class, flatten 1), the
  // set to compare with real images when fidelity (HAM-FD) is the question.
  const bool real_mix = cfg.balance == "real";
  const std::string by = fill ? cfg.balance.substr(5) : real_mix ? "none" : cfg.balance;
  const double flatten = real_mix ? 1.0 : cfg.flatten;
  if (by != "label" && by != "dx" && by != "none")
    return Status::error(
        "synth: --balance must be label, dx, none, real, fill-label or fill-dx (got '" +
        cfg.balance + "')");
  // Cells: (dx, attributes...) -> members.
  struct Cell {
    std::string dx;
    int label;
    std::map<std::string, std::string> sub;
    std::vector<size_t> members;
  };
  std::map<std::string, Cell> cells;
  for (size_t i = 0; i < real.size(); ++i) {
    const Record& r = real[i];
    if (r.label < 0) continue;
    auto it = captions.find(r.id);
    auto g = record_groups(r, it == captions.end() ? nullptr : &it->second);
    std::map<std::string, std::string> sub;
    std::string key = r.dx;
    for (auto& a : cfg.attributes) {
      sub[a] = g.count(a) ? g[a] : "unknown";
      key += "|" + sub[a];
    }
    auto& c = cells[key];
    c.dx = r.dx;
    c.label = r.label;
    c.sub = sub;
    c.members.push_back(i);
  }
  if (cells.empty()) return Status::error("synth: no labelled real training records to plan from");
  for (auto& v : cfg.vary)
    if (!is_vary_attribute(v))
      return Status::error("synth: --vary takes size and/or skin (got '" + v + "')");
  if (!is_emphasis(cfg.emphasis))
    return Status::error(
        "synth: --emphasis must be none, abcd-discordant or abcd-discordant-malignant (got '" +
        cfg.emphasis + "')");
  if (!std::isfinite(cfg.emphasis_strength) || cfg.emphasis_strength < 0)
    return Status::error("synth: --emphasis-strength must be a finite number >= 0 (got " +
                         std::to_string(cfg.emphasis_strength) + ")");
  // Each record's measured TDS (NaN without one) and, for abcd-discordant, its draw weight.
  std::vector<double> tds(real.size(), std::nan(""));
  double tds_sum = 0, tds_sq = 0;
  int64_t tds_n = 0;
  for (size_t i = 0; i < real.size(); ++i) {
    auto it = captions.find(real[i].id);
    if (real[i].label < 0 || it == captions.end() || !it->second.contains("measured")) continue;
    const auto& m = it->second["measured"];
    if (!m.contains("tds") || !m["tds"].is_number()) continue;
    tds[i] = m["tds"].get<double>();
    tds_sum += tds[i];
    tds_sq += tds[i] * tds[i];
    ++tds_n;
  }
  const double tds_mean = tds_n ? tds_sum / tds_n : 0.0;
  const double tds_sd =
      tds_n > 1 ? std::sqrt(std::max(0.0, (tds_sq - tds_n * tds_mean * tds_mean) / (tds_n - 1)))
                : 0.0;
  const bool benign_too = cfg.emphasis == "abcd-discordant";
  auto draw_weight = [&](size_t i) {
    if (std::isnan(tds[i]) || !(tds_sd > 0) || (real[i].label == 0 && !benign_too)) return 1.0;
    const double z = (tds[i] - tds_mean) / tds_sd;
    return std::exp(cfg.emphasis_strength * (real[i].label > 0 ? -z : z));
  };
  const bool weighted = cfg.emphasis != "none";
  // Classes.
  auto class_of = [&](const Cell& c) {
    return by == "label" ? std::to_string(c.label) : by == "dx" ? c.dx : std::string("all");
  };
  std::map<std::string, std::vector<std::string>> class_cells;
  std::map<std::string, int64_t> class_real;
  for (auto& [k, c] : cells) {
    class_cells[class_of(c)].push_back(k);
    class_real[class_of(c)] += static_cast<int64_t>(c.members.size());
  }
  std::vector<std::string> classes;
  std::vector<int64_t> reals;
  for (auto& [k, n] : class_real) {
    classes.push_back(k);
    reals.push_back(n);
  }
  // label/dx: the synthetic set itself has equal classes; fill-*: synthetic images go to the
  // classes that are short of real images (water-filling) so real + synthetic is balanced.
  auto per_class = fill ? water_fill(reals, cfg.total)
                        : apportion(std::vector<double>(reals.size(), 1.0), cfg.total);
  std::vector<SynthItem> plan;
  nlohmann::json cell_json = nlohmann::json::array();
  std::mt19937_64 rng(derive_seed(cfg.seed, Stream::kSynthPlan));
  // Mean TDS of each class's real records and of the planned sources (what the emphasis did).
  std::vector<std::pair<double, int64_t>> real_tds(classes.size()), plan_tds(classes.size());
  for (size_t ci = 0; ci < classes.size(); ++ci) {
    auto& keys = class_cells[classes[ci]];
    for (auto& k : keys)
      for (size_t m : cells[k].members)
        if (!std::isnan(tds[m]))
          real_tds[ci] = {real_tds[ci].first + tds[m], real_tds[ci].second + 1};
    std::vector<double> w;
    for (auto& k : keys)
      w.push_back(std::pow(static_cast<double>(cells[k].members.size()), flatten));
    auto n_cell = apportion(w, per_class[ci]);
    for (size_t j = 0; j < keys.size(); ++j) {
      Cell& c = cells[keys[j]];
      cell_json.push_back({{"dx", c.dx},
                           {"label", c.label},
                           {"subgroup", c.sub},
                           {"real", c.members.size()},
                           {"synthetic", n_cell[j]}});
      std::uniform_int_distribution<size_t> pick(0, c.members.size() - 1);
      std::discrete_distribution<size_t> pick_weighted;  // only with an emphasis
      if (weighted) {
        std::vector<double> cw;
        for (size_t m : c.members) cw.push_back(draw_weight(m));
        pick_weighted = std::discrete_distribution<size_t>(cw.begin(), cw.end());
      }
      for (int64_t k = 0; k < n_cell[j]; ++k) {
        const size_t r = c.members[weighted ? pick_weighted(rng) : pick(rng)];
        const Record& src = real[r];
        if (!std::isnan(tds[r]))
          plan_tds[ci] = {plan_tds[ci].first + tds[r], plan_tds[ci].second + 1};
        SynthItem it;
        it.dx = c.dx;
        it.label = c.label;
        it.subgroup = c.sub;
        it.source_id = src.id;
        auto cap = captions.find(src.id);
        if (cap != captions.end() && cap->second.contains("caption")) {
          it.prompt = cap->second["caption"].get<std::string>();
          if (cap->second.contains("measured")) {
            auto& m = cap->second["measured"];
            it.asked = {{"asymmetry", m.value("asymmetry", -1)},
                        {"border", m.value("border", -1)},
                        {"colours", m.value("colours", nlohmann::json::array())},
                        {"colour_count", m.value("colour_count", -1)}};
            if (!std::isnan(tds[r])) it.asked["tds"] = tds[r];
          }
        } else {
          it.prompt = compose_caption(metadata_facts(src), rng() | 1);
        }
        plan.push_back(std::move(it));
      }
    }
  }
  // Stable ids and seeds in plan order.
  for (size_t i = 0; i < plan.size(); ++i) {
    char id[32];
    std::snprintf(id, sizeof id, "synth_%06zu", i);
    plan[i].index = static_cast<int64_t>(i);
    plan[i].id = id;
    plan[i].seed = derive_seed(cfg.seed, Stream::kSynthImage, i);
    if (!cfg.vary.empty()) {
      std::mt19937_64 vr(derive_seed(cfg.seed, Stream::kSynthVary, i));
      plan[i].varied = nlohmann::json::object();
      for (auto& a : cfg.vary) {
        const auto& phrases = vary_phrases().at(a).first;
        const auto& phrase =
            phrases[std::uniform_int_distribution<size_t>(0, phrases.size() - 1)(vr)];
        plan[i].prompt = with_attribute(plan[i].prompt, a, phrase);
        plan[i].varied[a] = phrase;
      }
    }
    if (!cfg.omit.empty()) plan[i].prompt = without_phrases(plan[i].prompt, cfg.omit);
  }
  if (summary) {
    nlohmann::json cls = nlohmann::json::object();
    auto mean = [](const std::pair<double, int64_t>& s) {
      return s.second ? nlohmann::json(s.first / s.second) : nlohmann::json(nullptr);
    };
    for (size_t ci = 0; ci < classes.size(); ++ci)
      cls[classes[ci]] = {{"real", reals[ci]},
                          {"synthetic", per_class[ci]},
                          {"source_tds_mean", mean(plan_tds[ci])},
                          {"real_tds_mean", mean(real_tds[ci])}};
    *summary = {{"config", cfg.to_json()},
                {"classes", cls},
                {"cells", cell_json},
                {"planned", plan.size()}};
  }
  return plan;
}

int init_transform(const SynthItem& item) { return static_cast<int>((item.seed >> 17) % 8); }

Result<InitImageFn> source_images(LoadedGenerator& g, const std::string& prepared_dir,
                                  const PreparedSet& ps) {
  auto row = std::make_shared<std::map<std::string, int64_t>>();
  for (int64_t i = 0; i < ps.count(); ++i) (*row)[ps.records[i].id] = i;
  auto find = [row](const SynthItem& it) {
    auto r = row->find(it.source_id);
    if (r == row->end())
      throw std::invalid_argument("synth: source image '" + it.source_id + "' of " + it.id +
                                  " is not in the prepared cache");
    return r->second;
  };
  const auto& mc = g.model->config();
  if (g.latent()) {
    LF_ASSIGN_OR_RETURN(torch::Tensor lat, prepared_latents(g, prepared_dir, ps));
    if (lat.size(2) != mc.channels || lat.size(3) != mc.image_size)
      return Status::error(prepared_dir + ": its " + std::to_string(ps.size) +
                           "px images give latents the generator does not take (it expects " +
                           std::to_string(mc.channels) + "x" + std::to_string(mc.image_size) + "x" +
                           std::to_string(mc.image_size) + ")");
    return InitImageFn([lat, find](const SynthItem& it, int k) {
      return lat[find(it)][k % lat.size(1)].to(torch::kFloat32);
    });
  }
  if (ps.size != mc.image_size)
    return Status::error(prepared_dir + ": images are " + std::to_string(ps.size) +
                         "px but the generator makes " + std::to_string(mc.image_size) + "px");
  const PreparedSet* p = &ps;
  return InitImageFn([p, find](const SynthItem& it, int k) {
    return dihedral(images_to_tensor({p->image(find(it))}, p->size), k).squeeze(0);
  });
}

namespace {
std::string adapter_tag_for(const SynthGenConfig& cfg, const std::string& dx) {
  auto v = cfg.variant_tag.find(dx);
  return v != cfg.variant_tag.end() ? v->second : cfg.adapter_hash;
}
}  // namespace

Result<int64_t> generate_synthetic(LoadedGenerator& g, const std::vector<SynthItem>& plan,
                                   const SynthGenConfig& cfg, const nlohmann::json& plan_summary) {
  if (cfg.out.empty()) return Status::error("synth: --out is required");
  LF_RETURN_IF_ERROR(make_dirs(cfg.out + "/images"));
  const std::string manifest = cfg.out + "/manifest.jsonl";
  // Resume: items already in the manifest (whose image exists) are done.
  std::set<std::string> done;
  if (file_exists(manifest)) {
    // A kill during the append leaves a torn last line: it is dropped and its images are redone.
    LF_ASSIGN_OR_RETURN(auto recs, read_jsonl_tolerant(manifest));
    // A set is made by one generator (and adapter) from one plan: resuming with another would mix
    // two sets under one manifest, so it is refused before anything is written.
    std::map<std::string, const SynthItem*> planned;
    for (auto& it : plan) planned[it.id] = &it;
    for (const auto& j : recs) {
      const std::string id = j.value("id", "");
      auto it = planned.find(id);
      // The adapter this run would make the image with (its diagnosis' variant, else the base's).
      const std::string want =
          adapter_tag_for(cfg, it != planned.end() ? it->second->dx : j.value("dx", std::string()));
      if (j.value("generator_hash", g.hash) != g.hash || j.value("adapter_hash", want) != want)
        return Status::error(manifest + ": " + id + " was made by generator " +
                             j.value("generator_hash", "") + " (adapter '" +
                             j.value("adapter_hash", "") + "'), this run's is " + g.hash +
                             " (adapter '" + want +
                             "'); refusing to mix two generators in one set (use a new --out)");
      if (it != planned.end() && (j.value("prompt", "") != it->second->prompt ||
                                  j.value("seed", uint64_t{0}) != it->second->seed))
        return Status::error(manifest + ": " + id +
                             " has another prompt or seed than this run's plan (--total, "
                             "--balance, --flatten, --vary or --seed changed?); refusing to mix "
                             "two plans in one set (use a new --out)");
    }
    std::string kept;
    for (const auto& j : recs)
      if (file_exists(cfg.out + "/" + j.value("file", ""))) {
        done.insert(j.value("id", ""));
        kept += j.dump() + "\n";
      }
    LF_RETURN_IF_ERROR(write_file_atomic(manifest, kept));
  }
  nlohmann::json plan_file = plan_summary;
  plan_file["generator"] = cfg.generator_path;
  plan_file["generator_hash"] = g.hash;
  plan_file["sampler"] = {
      {"method", cfg.gen.sampler.method}, {"steps", cfg.gen.sampler.steps},
      {"shift", cfg.gen.sampler.shift},   {"eta", cfg.gen.sampler.eta},
      {"cfg", cfg.gen.cfg_scale},         {"cfg_interval", {cfg.gen.cfg_t_lo, cfg.gen.cfg_t_hi}},
      {"strength", cfg.gen.sampler.start}};
  {
    std::vector<std::string> prompts;
    for (const auto& it : plan) prompts.push_back(it.prompt);
    plan_file["prompt_phrases"] = prompt_phrase_drift(g.metadata, prompts);
    const auto& pp = plan_file["prompt_phrases"];
    if (pp["training"].is_null())
      log_info(
          "synth: the generator records no caption profile (older checkpoints do not), so "
          "the prompts' structure phrases " +
          pp["prompts"].dump() + " cannot be checked against its training captions");
    auto pct = [](const nlohmann::json& share) {
      return std::to_string(std::lround(100 * share.get<double>())) + "%";
    };
    for (const auto& d : pp["drifted"])
      log_warn("synth: \"" + d["phrase"].get<std::string>() + "\" is in " + pct(d["prompts"]) +
               " of the prompts but " + pct(d["training"]) +
               " of the generator's training captions: the captions come from another detector "
               "than the one it learned; consider --omit-phrases \"" +
               d["phrase"].get<std::string>() + "\"");
  }
  LF_RETURN_IF_ERROR(write_file_atomic(cfg.out + "/plan.json", plan_file.dump(2) + "\n"));
  std::vector<const SynthItem*> todo;
  for (auto& it : plan)
    if (!done.count(it.id)) todo.push_back(&it);
  // One variant at a time: the base's items first, then each variant's, in plan order within.
  auto variant_of = [&cfg](const SynthItem* it) {
    return cfg.variant_tag.count(it->dx) ? it->dx : std::string();
  };
  std::stable_sort(todo.begin(), todo.end(), [&](const SynthItem* a, const SynthItem* b) {
    return variant_of(a) < variant_of(b);
  });
  if (!cfg.variant_tag.empty() && !cfg.use_variant)
    return Status::error("synth: per-diagnosis variants without a way to switch to them");
  if (!done.empty())
    log_info("synth: " + std::to_string(done.size()) + " images already done, " +
             std::to_string(todo.size()) + " to go");
  Progress prog("synth", static_cast<int64_t>(plan.size()), "img",
                static_cast<int64_t>(done.size()));
  const int B = std::max(1, cfg.gen.batch);
  const bool img2img = cfg.gen.sampler.start < 1.0;
  if (img2img && !cfg.init)
    return Status::error("synth: --strength below 1 needs the source images (a prepared cache)");
  if (cfg.save_latents) {
    if (!g.latent())
      return Status::error("synth: --save-latents needs a latent generator (" + cfg.generator_path +
                           " works in pixel space)");
    LF_RETURN_IF_ERROR(make_dirs(cfg.out + "/latents"));
  }
  int64_t made = 0;
  std::string active = "";  // the variant the generator is set up for ("" = the base)
  for (size_t s = 0, e = 0; s < todo.size(); s = e) {
    const std::string variant = variant_of(todo[s]);
    if (variant != active) {
      LF_RETURN_IF_ERROR(cfg.use_variant(variant));
      active = variant;
    }
    // A batch never spans two variants.
    e = s;
    while (e < todo.size() && e < s + static_cast<size_t>(B) && variant_of(todo[e]) == variant) ++e;
    std::vector<std::string> prompts;
    std::vector<uint64_t> seeds;
    std::vector<torch::Tensor> inits;
    for (size_t i = s; i < e; ++i) {
      prompts.push_back(todo[i]->prompt);
      seeds.push_back(todo[i]->seed);
      if (img2img) inits.push_back(cfg.init(*todo[i], init_transform(*todo[i])));
    }
    torch::Tensor lat;
    auto imgs =
        generate_images(g, prompts, seeds, cfg.gen, img2img ? torch::stack(inits) : torch::Tensor(),
                        cfg.save_latents ? &lat : nullptr);
    auto u8 = tensor_to_images(imgs);
    const int S = static_cast<int>(imgs.size(2));
    std::string lines;
    for (size_t k = 0; k < prompts.size(); ++k) {
      const SynthItem& it = *todo[s + k];
      cv::Mat rgb(S, S, CV_8UC3, u8.data() + k * S * S * 3), bgr;
      cv::cvtColor(rgb, bgr, cv::COLOR_RGB2BGR);
      std::string file = "images/" + it.id + ".png";
      LF_RETURN_IF_ERROR(write_png(cfg.out + "/" + file, bgr));
      if (cfg.save_latents) {
        SafeTensors st;
        st.tensors["latent"] =
            to_raw(lat[static_cast<int64_t>(k)].to(torch::kFloat32).contiguous());
        st.metadata = {{"format", "lesionflow.latent.v1"},
                       {"id", it.id},
                       {"latent_hash", g.ae_hash},
                       {"generator_hash", g.hash}};
        LF_RETURN_IF_ERROR(save_safetensors(cfg.out + "/latents/" + it.id + ".safetensors", st));
      }
      nlohmann::json j = sampling_metadata(cfg.gen);  // sampler, steps, shift, eta, cfg, interval
      j.update({{"id", it.id},
                {"file", file},
                {"prompt", it.prompt},
                {"label", it.label},
                {"dx", it.dx},
                {"subgroup", it.subgroup},
                {"source_id", it.source_id},
                {"seed", it.seed},
                {"generator_hash", g.hash},
                {"adapter_hash", adapter_tag_for(cfg, it.dx)}});
      if (!it.asked.is_null()) j["asked"] = it.asked;
      if (!it.varied.is_null()) j["varied"] = it.varied;
      if (img2img)  // image-to-image: what it started from
        j["init"] = {{"source_id", it.source_id},
                     {"dihedral", init_transform(it)},
                     {"strength", cfg.gen.sampler.start}};
      lines += j.dump() + "\n";
    }
    append_line(manifest,
                lines.substr(0, lines.size() - 1));  // after the PNGs: a line implies its image
    made += static_cast<int64_t>(prompts.size());
    prog.update(static_cast<int64_t>(done.size()) + made);
  }
  if (!active.empty()) LF_RETURN_IF_ERROR(cfg.use_variant(""));
  prog.finish();
  return made;
}

Result<nlohmann::json> export_synthetic(const std::string& dir, const std::string& format,
                                        const std::string& out,
                                        const std::map<std::string, Record>& sources) {
  namespace fs = std::filesystem;
  if (format != "imagefolder" && format != "ham")
    return Status::error("synth export: --format must be imagefolder or ham, not '" + format + "'");
  if (out.empty()) return Status::error("synth export: --out is required");
  if (fs::exists(out)) return Status::error(out + ": already exists (export writes a new folder)");
  const std::string manifest = dir + "/manifest.jsonl";
  if (!file_exists(manifest))
    return Status::error(dir + ": no manifest.jsonl (not a synthetic set made by 'synth')");
  std::vector<int> lines;
  LF_ASSIGN_OR_RETURN(auto recs, read_jsonl(manifest, &lines));
  if (recs.empty()) return Status::error(manifest + ": no images listed");
  const auto& known = known_dx_codes();
  LF_ASSIGN_OR_RETURN(PartialDir part, PartialDir::begin(out, "export"));
  const std::string& tmp = part.path();
  std::error_code ec;
  std::ostringstream csv;
  csv << (format == "ham" ? "lesion_id,image_id,dx,dx_type,age,sex,localization,"
                          : "class,image_id,dx,label,")
      << "prompt,seed,source_id,generator_hash\n";
  std::map<std::string, int64_t> per_class;
  for (size_t i = 0; i < recs.size(); ++i) {
    const auto& j = recs[i];
    const std::string at = manifest + ":" + std::to_string(lines[i]) + ": ";
    const std::string id = j.value("id", ""), file = j.value("file", ""), dx = j.value("dx", "");
    const int label = j.value("label", -1);
    if (id.empty() || file.empty() || dx.empty())
      return Status::error(at + "record lacks id, file or dx");
    const std::string src = dir + "/" + file;
    if (!file_exists(src)) return Status::error(at + "image " + src + " does not exist");
    const std::string source_id = j.value("source_id", "");
    std::string dest, cls;
    if (format == "ham") {
      if (std::find(known.begin(), known.end(), dx) == known.end() || dx == "unk")
        return Status::error(at + "dx '" + dx +
                             "' is not a HAM10000 diagnosis; use --format imagefolder");
      dest = tmp + "/images/" + id + ".png";
    } else {
      cls = dx != "unk" ? dx : label == 1 ? "malignant" : label == 0 ? "benign" : "";
      if (cls.empty()) return Status::error(at + "dx 'unk' without a label: no class folder");
      dest = tmp + "/" + cls + "/" + id + ".png";
    }
    fs::create_directories(fs::path(dest).parent_path(), ec);
    if (!fs::copy_file(src, dest, fs::copy_options::overwrite_existing, ec))
      return Status::error(dest + ": cannot copy " + src + ": " + ec.message());
    const std::string seed = j.contains("seed") ? j["seed"].dump() : "";
    const std::string tail = csv_escape(j.value("prompt", "")) + "," + seed + "," +
                             csv_escape(source_id) + "," + j.value("generator_hash", "") + "\n";
    if (format == "ham") {
      auto it = sources.find(source_id);
      const Record* r = it != sources.end() ? &it->second : nullptr;
      std::string sex = r ? r->sex : "unknown";
      if (!r && j.contains("subgroup") && j["subgroup"].contains("sex"))
        sex = j["subgroup"]["sex"].get<std::string>();
      char age[32] = "";
      if (r && r->age >= 0) std::snprintf(age, sizeof age, "%.1f", r->age);
      csv << csv_escape("syn_" + (source_id.empty() ? id : source_id)) << "," << csv_escape(id)
          << "," << dx << ",synthetic," << age << "," << sex << ","
          << csv_escape(r ? r->site : "unknown") << "," << tail;
    } else {
      csv << cls << "," << csv_escape(id) << "," << dx << "," << label << "," << tail;
    }
    per_class[format == "ham" ? dx : cls]++;
  }
  LF_RETURN_IF_ERROR(write_file_atomic(
      tmp + (format == "ham" ? "/HAM10000_metadata.csv" : "/provenance.csv"), csv.str()));
  LF_RETURN_IF_ERROR(part.commit());
  nlohmann::json counts(per_class);
  return nlohmann::json{
      {"out", out}, {"format", format}, {"images", recs.size()}, {"per_class", counts}};
}

}  // namespace lf
