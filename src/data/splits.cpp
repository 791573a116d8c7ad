// Lesion-grouped, dx-stratified splits and scarcity subsets.
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/rng.h"

namespace lf {

Result<std::vector<std::string>> make_splits(const std::vector<Record>& recs,
                                             const SplitConfig& cfg) {
  const double fr[3] = {cfg.train, cfg.val, cfg.test};
  static const char* kNames[3] = {"train", "val", "test"};
  if (std::abs(fr[0] + fr[1] + fr[2] - 1.0) > 1e-6 || fr[0] < 0 || fr[1] < 0 || fr[2] < 0)
    return Status::error("split fractions must be non-negative and sum to 1");
  // group -> member indices; group stratum = dx of its first image (a lesion has one dx).
  std::map<std::string, std::vector<size_t>> groups;
  for (size_t i = 0; i < recs.size(); ++i) groups[recs[i].group_key()].push_back(i);
  std::map<std::string, std::vector<const std::vector<size_t>*>> strata;
  for (const auto& [key, members] : groups) strata[recs[members[0]].dx].push_back(&members);
  std::vector<std::string> out(recs.size());
  // Not derive_seed: this stream fixes the published HAM10000 split (docs/results.md, the shipped
  // models' evaluation); changing it would move every HAM number.
  std::mt19937_64 rng(cfg.seed * 0x9E3779B97F4A7C15ULL + 7);
  for (auto& [dx, gs] : strata) {  // std::map order: deterministic
    std::shuffle(gs.begin(), gs.end(), rng);
    // Large groups first so the small ones can fill the remaining deficit precisely.
    std::stable_sort(gs.begin(), gs.end(), [](auto* a, auto* b) { return a->size() > b->size(); });
    int64_t total = 0;
    for (auto* g : gs) total += g->size();
    double have[3] = {0, 0, 0};
    for (auto* g : gs) {
      int best = 0;
      double best_def = -1e18;
      for (int s = 0; s < 3; ++s) {
        if (fr[s] <= 0) continue;
        double deficit = (fr[s] * total - have[s]) / (fr[s] * total);
        if (deficit > best_def) {
          best_def = deficit;
          best = s;
        }
      }
      have[best] += g->size();
      for (size_t i : *g) out[i] = kNames[best];
    }
  }
  return out;
}

Status write_splits(const std::string& path, const std::vector<Record>& recs,
                    const std::vector<std::string>& split) {
  std::ostringstream os;
  os << "id,group,dx,label,split\n";
  for (size_t i = 0; i < recs.size(); ++i)
    os << csv_escape(recs[i].id) << ',' << csv_escape(recs[i].group_key()) << ',' << recs[i].dx
       << ',' << recs[i].label << ',' << split[i] << '\n';
  return write_file_atomic(path, os.str());
}

Result<std::vector<std::pair<std::string, std::string>>> read_splits(const std::string& path) {
  LF_ASSIGN_OR_RETURN(CsvTable t, read_csv(path));
  int ci = t.column("id"), cs = t.column("split");
  if (ci < 0 || cs < 0) return Status::error(path + ": splits file needs columns 'id' and 'split'");
  const int cg = t.column("group");  // lesion (or patient): must not straddle two splits
  std::vector<std::pair<std::string, std::string>> out;
  std::map<std::string, size_t> first_of_id, first_of_group;
  auto line = [&](size_t i) { return path + ":" + std::to_string(t.line_numbers[i]); };
  for (size_t i = 0; i < t.rows.size(); ++i) {
    const std::string& s = t.rows[i][cs];
    if (s != "train" && s != "val" && s != "test")
      return Status::error(line(i) + ": column 'split': expected train/val/test, found '" + s +
                           "'");
    auto [id_it, new_id] = first_of_id.emplace(t.rows[i][ci], i);
    if (!new_id)
      return Status::error(line(i) + ": image '" + t.rows[i][ci] + "' is listed twice (first at " +
                           "line " + std::to_string(t.line_numbers[id_it->second]) + ")");
    if (cg >= 0 && !t.rows[i][cg].empty()) {
      auto [g_it, new_g] = first_of_group.emplace(t.rows[i][cg], i);
      if (!new_g && t.rows[g_it->second][cs] != s)
        return Status::error(
            line(i) + ": lesion group '" + t.rows[i][cg] + "' is in split '" + s +
            "' here but in '" + t.rows[g_it->second][cs] + "' at line " +
            std::to_string(t.line_numbers[g_it->second]) +
            " (images of one lesion in two splits leak between training and test)");
    }
    out.emplace_back(t.rows[i][ci], s);
  }
  if (out.empty()) return Status::error(path + ": no rows after the header");
  return out;
}

Result<std::vector<size_t>> select_split(const std::vector<Record>& recs,
                                         const std::string& splits_csv, const std::string& name) {
  LF_ASSIGN_OR_RETURN(auto pairs, read_splits(splits_csv));
  std::map<std::string, std::string> m(pairs.begin(), pairs.end());
  std::vector<size_t> idx;
  for (size_t i = 0; i < recs.size(); ++i) {
    auto it = m.find(recs[i].id);
    if (it == m.end())
      return Status::error(splits_csv + ": no split for image '" + recs[i].id +
                           "' (splits file made for another dataset?)");
    if (it->second == name) idx.push_back(i);
  }
  if (m.size() > recs.size()) {  // ids the data does not have: a splits file of another dataset
    std::set<std::string> have;
    for (const auto& r : recs) have.insert(r.id);
    for (const auto& [id, s] : pairs)
      if (!have.count(id))
        return Status::error(splits_csv + ": image '" + id + "' is not in the data (" +
                             std::to_string(m.size() - recs.size()) +
                             " ids of the splits file are unknown; made for another dataset?)");
  }
  return idx;
}

Result<std::vector<size_t>> scarcity_subset(const std::vector<Record>& recs,
                                            const std::vector<size_t>& pool, int64_t n,
                                            double mal_frac, uint64_t seed) {
  if (n <= 0) return Status::error("scarcity: N must be positive");
  std::vector<size_t> pos, neg;
  for (size_t i : pool) (recs[i].label == 1 ? pos : neg).push_back(i);
  if (mal_frac < 0) mal_frac = pool.empty() ? 0 : static_cast<double>(pos.size()) / pool.size();
  int64_t want_pos = static_cast<int64_t>(std::llround(n * mal_frac));
  int64_t want_neg = n - want_pos;
  if (want_pos > static_cast<int64_t>(pos.size()) || want_neg > static_cast<int64_t>(neg.size()))
    return Status::error("scarcity: asked for " + std::to_string(want_pos) + " malignant + " +
                         std::to_string(want_neg) + " benign images, pool has " +
                         std::to_string(pos.size()) + " + " + std::to_string(neg.size()));
  std::mt19937_64 rng(derive_seed(seed, Stream::kScarcity));
  auto take = [&](std::vector<size_t> v, int64_t k) {
    std::shuffle(v.begin(), v.end(), rng);
    // one image per lesion first, then repeats
    std::vector<size_t> first, rest;
    std::set<std::string> seen;
    for (size_t i : v) (seen.insert(recs[i].group_key()).second ? first : rest).push_back(i);
    first.insert(first.end(), rest.begin(), rest.end());
    first.resize(k);
    return first;
  };
  auto a = take(pos, want_pos), b = take(neg, want_neg);
  a.insert(a.end(), b.begin(), b.end());
  std::sort(a.begin(), a.end());
  return a;
}

Result<nlohmann::json> split_dataset(const Dataset& ds, const SplitConfig& cfg,
                                     const std::string& out, int64_t scarcity,
                                     double malignant_fraction) {
  if (out.empty()) return Status::error("data split: --out FILE.csv is required");
  LF_ASSIGN_OR_RETURN(auto split, make_splits(ds.records, cfg));
  LF_RETURN_IF_ERROR(write_splits(out, ds.records, split));
  nlohmann::json j = {{"splits", out}, {"seed", cfg.seed}};
  std::map<std::string, std::map<std::string, int64_t>> dx_by_split;
  std::map<std::string, int64_t> n_by_split;
  for (size_t i = 0; i < split.size(); ++i) {
    dx_by_split[split[i]][ds.records[i].dx]++;
    n_by_split[split[i]]++;
  }
  for (auto& [s, m] : dx_by_split) {
    j["counts"][s]["images"] = n_by_split[s];
    for (auto& [dx, c] : m) j["counts"][s]["dx_fraction"][dx] = double(c) / n_by_split[s];
  }
  if (scarcity > 0) {
    std::vector<size_t> pool;
    for (size_t i = 0; i < split.size(); ++i)
      if (split[i] == "train") pool.push_back(i);
    LF_ASSIGN_OR_RETURN(auto sub,
                        scarcity_subset(ds.records, pool, scarcity, malignant_fraction, cfg.seed));
    std::ostringstream os;
    os << "id\n";
    for (size_t i : sub) os << csv_escape(ds.records[i].id) << '\n';
    std::string path =
        out.substr(0, out.rfind('.')) + ".scarcity" + std::to_string(scarcity) + ".csv";
    LF_RETURN_IF_ERROR(write_file_atomic(path, os.str()));
    j["scarcity_subset"] = path;
  }
  return j;
}

Result<std::vector<size_t>> split_or_default(const std::vector<Record>& recs,
                                             const std::string& splits_csv,
                                             const std::string& name) {
  if (!splits_csv.empty()) return select_split(recs, splits_csv, name);
  std::vector<size_t> idx;
  if (name == "test") return idx;
  for (size_t i = 0; i < recs.size(); ++i)
    if ((i % 10 == 9) == (name == "val")) idx.push_back(i);
  return idx;
}

}  // namespace lf
