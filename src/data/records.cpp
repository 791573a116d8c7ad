#include <algorithm>
#include <filesystem>
#include <map>
#include <random>
#include <sstream>

#include "lesionflow/data.h"
#include "lesionflow/io.h"
#include "lesionflow/phantom.h"
#include "lesionflow/rng.h"

namespace lf {
namespace fs = std::filesystem;
using nlohmann::json;

Result<LabelMap> LabelMap::parse(const std::string& list) {
  LabelMap m;
  if (list.empty()) return m;
  m.malignant.clear();
  std::stringstream ss(list);
  std::string tok;
  while (std::getline(ss, tok, ',')) {
    if (tok.empty()) continue;
    const auto& k = known_dx_codes();
    if (std::find(k.begin(), k.end(), tok) == k.end())
      return Status::error("--malignant: unknown dx code '" + tok + "'");
    m.malignant.insert(tok);
  }
  return m;
}

const std::vector<std::string>& known_dx_codes() {
  static const std::vector<std::string> k = {"nv",   "mel", "bkl", "bcc", "akiec",
                                             "vasc", "df",  "scc", "unk"};
  return k;
}

std::string dx_long_name(const std::string& dx) {
  static const std::map<std::string, std::string> k = {
      {"nv", "melanocytic nevus"},      {"mel", "melanoma"},
      {"bkl", "benign keratosis"},      {"bcc", "basal cell carcinoma"},
      {"akiec", "actinic keratosis"},   {"vasc", "vascular lesion"},
      {"df", "dermatofibroma"},         {"scc", "squamous cell carcinoma"},
      {"unk", "lesion of unknown type"}};
  auto it = k.find(dx);
  return it == k.end() ? dx : it->second;
}

std::string Record::group_key() const {
  if (!lesion_id.empty()) return lesion_id;
  if (!patient_id.empty()) return patient_id;
  return id;
}

std::string age_band(double age) {
  if (age < 0) return "unknown";
  if (age < 30) return "<30";
  if (age < 45) return "30-44";
  if (age < 60) return "45-59";
  if (age < 75) return "60-74";
  return "75+";
}

json record_to_json(const Record& r) {
  json j = {{"id", r.id},
            {"image_path", r.image_path},
            {"mask_path", r.mask_path},
            {"dx", r.dx},
            {"label", r.label},
            {"lesion_id", r.lesion_id},
            {"patient_id", r.patient_id},
            {"age", r.age},
            {"sex", r.sex},
            {"site", r.site},
            {"dx_type", r.dx_type},
            {"source", r.source}};
  if (!r.extra.empty()) j["extra"] = r.extra;
  return j;
}

Record record_from_json(const json& j) {
  Record r;
  r.id = j.value("id", "");
  r.image_path = j.value("image_path", "");
  r.mask_path = j.value("mask_path", "");
  r.dx = j.value("dx", "");
  r.label = j.value("label", -1);
  r.lesion_id = j.value("lesion_id", "");
  r.patient_id = j.value("patient_id", "");
  r.age = j.value("age", -1.0);
  r.sex = j.value("sex", "unknown");
  r.site = j.value("site", "unknown");
  r.dx_type = j.value("dx_type", "");
  r.source = j.value("source", "");
  if (j.contains("extra")) r.extra = j["extra"];
  return r;
}

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string where(const CsvTable& t, size_t row, int col) {
  return t.path + ":" + std::to_string(t.line_numbers[row]) + ": column '" + t.header[col] + "'";
}

// Find IMAGE_ID.{jpg,jpeg,png} in any of dirs; "" if none.
std::string find_image(const std::vector<std::string>& dirs, const std::string& id) {
  for (const auto& d : dirs)
    for (const char* ext : {".jpg", ".jpeg", ".png", ".JPG", ".bmp"}) {
      std::string p = d + "/" + id + ext;
      if (file_exists(p)) return p;
    }
  return "";
}

Result<double> parse_age(const CsvTable& t, size_t row, int col) {
  const std::string& s = t.rows[row][col];
  if (s.empty() || lower(s) == "unknown" || lower(s) == "nan") return -1.0;
  try {
    size_t pos = 0;
    double v = std::stod(s, &pos);
    if (pos != s.size() || v < 0 || v > 130) throw std::invalid_argument("range");
    return v;
  } catch (...) {
    return Status::error(where(t, row, col) + ": invalid age '" + s + "'");
  }
}

std::string norm_sex(const std::string& s) {
  std::string l = lower(s);
  if (l == "male" || l == "m") return "male";
  if (l == "female" || l == "f") return "female";
  return "unknown";
}

std::string norm_site(const std::string& s) {
  std::string l = lower(s);
  return l.empty() || l == "nan" ? "unknown" : l;
}

// A metadata table with no rows, or one image listed twice, is an error naming the file (and
// both lines of a duplicate): a repeated id would silently weigh an image twice and could put
// it into two splits.
Status check_rows_and_ids(const CsvTable& t, int c_id) {
  if (t.rows.empty())
    return Status::error(t.path + ": no rows after the header (no images listed)");
  std::map<std::string, int> first_line;
  for (size_t i = 0; i < t.rows.size(); ++i) {
    auto [it, fresh] = first_line.emplace(t.rows[i][c_id], t.line_numbers[i]);
    if (!fresh)
      return Status::error(where(t, i, c_id) + ": image '" + it->first +
                           "' is listed twice (first at line " + std::to_string(it->second) + ")");
  }
  return Status::ok_status();
}

}  // namespace

Result<Dataset> read_ham10000(const std::string& root, const LabelMap& labels) {
  std::string csv = root + "/HAM10000_metadata.csv";
  if (!file_exists(csv)) csv = root + "/HAM10000_metadata";
  if (!file_exists(csv)) return Status::error(root + ": no HAM10000_metadata.csv found");
  LF_ASSIGN_OR_RETURN(CsvTable t, read_csv(csv));
  const char* required[] = {"lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"};
  for (const char* c : required)
    if (t.column(c) < 0) return Status::error(csv + ": missing required column '" + c + "'");
  std::vector<std::string> dirs;
  for (const char* d : {"images", "HAM10000_images_part_1", "HAM10000_images_part_2", "."})
    if (fs::is_directory(root + "/" + d)) dirs.push_back(root + "/" + d);
  std::vector<std::string> mask_dirs;
  for (const char* d : {"masks", "HAM10000_segmentations_lesion_tschandl"})
    if (fs::is_directory(root + "/" + d)) mask_dirs.push_back(root + "/" + d);
  const int c_les = t.column("lesion_id"), c_img = t.column("image_id"), c_dx = t.column("dx"),
            c_type = t.column("dx_type"), c_age = t.column("age"), c_sex = t.column("sex"),
            c_loc = t.column("localization");
  LF_RETURN_IF_ERROR(check_rows_and_ids(t, c_img));
  const auto& known = known_dx_codes();
  Dataset ds{"ham10000", root, {}};
  ds.records.reserve(t.rows.size());
  for (size_t i = 0; i < t.rows.size(); ++i) {
    const auto& row = t.rows[i];
    Record r;
    r.id = row[c_img];
    if (r.id.empty()) return Status::error(where(t, i, c_img) + ": empty image_id");
    r.dx = lower(row[c_dx]);
    if (std::find(known.begin(), known.end(), r.dx) == known.end())
      return Status::error(where(t, i, c_dx) + ": unknown dx code '" + row[c_dx] + "'");
    r.label = labels.label_of(r.dx);
    r.lesion_id = row[c_les];
    LF_ASSIGN_OR_RETURN(r.age, parse_age(t, i, c_age));
    r.sex = norm_sex(row[c_sex]);
    r.site = norm_site(row[c_loc]);
    r.dx_type = lower(row[c_type]);
    r.source = "ham10000";
    r.image_path = find_image(dirs, r.id);
    if (r.image_path.empty())
      return Status::error(where(t, i, c_img) + ": image '" + r.id + "' not found under " + root);
    for (const auto& md : mask_dirs) {
      std::string m = md + "/" + r.id + "_segmentation.png";
      if (file_exists(m)) {
        r.mask_path = m;
        break;
      }
    }
    ds.records.push_back(std::move(r));
  }
  return ds;
}

Result<Dataset> read_isic_csv(const std::string& csv, const std::string& image_dir_in,
                              const LabelMap& labels) {
  LF_ASSIGN_OR_RETURN(CsvTable t, read_csv(csv));
  std::string base = fs::path(csv).parent_path().string();
  if (base.empty()) base = ".";
  std::vector<std::string> dirs;
  if (!image_dir_in.empty())
    dirs.push_back(image_dir_in);
  else
    for (std::string d : {base, base + "/images", base + "/train", base + "/jpeg/train"})
      if (fs::is_directory(d)) dirs.push_back(d);
  Dataset ds{"isic", csv, {}};
  int c_id = -1;
  for (const char* name : {"image_id", "image_name", "image"})
    if (c_id < 0) c_id = t.column(name);
  if (c_id < 0)
    return Status::error(csv + ": missing required column 'image_id' (or 'image'/'image_name')");
  LF_RETURN_IF_ERROR(check_rows_and_ids(t, c_id));
  // Which layout?
  enum { k2017, k2019, k2020 } layout;
  static const std::vector<std::pair<std::string, std::string>> k2019cols = {
      {"MEL", "mel"}, {"NV", "nv"}, {"BCC", "bcc"},   {"AK", "akiec"}, {"AKIEC", "akiec"},
      {"BKL", "bkl"}, {"DF", "df"}, {"VASC", "vasc"}, {"SCC", "scc"},  {"UNK", "unk"}};
  if (t.column("melanoma") >= 0 && t.column("seborrheic_keratosis") >= 0)
    layout = k2017;
  else if (t.column("MEL") >= 0 && t.column("NV") >= 0)
    layout = k2019;
  else if (t.column("target") >= 0 || t.column("benign_malignant") >= 0)
    layout = k2020;
  else
    return Status::error(csv +
                         ": unrecognised ISIC layout: need 'melanoma'+'seborrheic_keratosis' "
                         "(2017/2018), one-hot 'MEL','NV',... (2019) or 'target' (2020) columns");
  static const std::map<std::string, std::string> k2020dx = {
      {"nevus", "nv"},
      {"melanoma", "mel"},
      {"seborrheic keratosis", "bkl"},
      {"lentigo nos", "bkl"},
      {"lichenoid keratosis", "bkl"},
      {"solar lentigo", "bkl"},
      {"cafe-au-lait macule", "bkl"},
      {"atypical melanocytic proliferation", "nv"},
      {"unknown", "unk"},
      {"", "unk"}};
  const int c_pat = t.column("patient_id"), c_les = t.column("lesion_id");
  const int c_sex = t.column("sex"),
            c_age = t.column("age_approx") >= 0 ? t.column("age_approx") : t.column("age");
  const int c_site = t.column("anatom_site_general_challenge") >= 0
                         ? t.column("anatom_site_general_challenge")
                         : t.column("anatom_site_general");
  for (size_t i = 0; i < t.rows.size(); ++i) {
    const auto& row = t.rows[i];
    Record r;
    r.id = row[c_id];
    r.source = "isic";
    if (layout == k2017) {
      auto flag = [&](int c) -> Result<bool> {
        const std::string& s = row[c];
        if (s == "1" || s == "1.0") return true;
        if (s == "0" || s == "0.0") return false;
        return Status::error(where(t, i, c) + ": expected 0 or 1, found '" + s + "'");
      };
      LF_ASSIGN_OR_RETURN(bool mel, flag(t.column("melanoma")));
      LF_ASSIGN_OR_RETURN(bool sk, flag(t.column("seborrheic_keratosis")));
      r.dx = mel ? "mel" : (sk ? "bkl" : "nv");
    } else if (layout == k2019) {
      for (const auto& [col, code] : k2019cols) {
        int c = t.column(col);
        if (c < 0) continue;
        try {
          if (!row[c].empty() && std::stod(row[c]) > 0.5) r.dx = code;
        } catch (...) {
          return Status::error(where(t, i, c) + ": expected a number, found '" + row[c] + "'");
        }
      }
      if (r.dx.empty())
        return Status::error(t.path + ":" + std::to_string(t.line_numbers[i]) +
                             ": no diagnosis column is set to 1");
    } else {
      int c_dx = t.column("diagnosis");
      std::string d = c_dx >= 0 ? lower(row[c_dx]) : "";
      auto it = k2020dx.find(d);
      if (it == k2020dx.end()) {
        const auto& k = known_dx_codes();
        if (std::find(k.begin(), k.end(), d) == k.end())
          return Status::error(where(t, i, c_dx) + ": unknown diagnosis '" + row[c_dx] + "'");
        r.dx = d;
      } else {
        r.dx = it->second;
      }
    }
    r.label = labels.label_of(r.dx);
    if (layout == k2020) {
      int c_t = t.column("target"), c_bm = t.column("benign_malignant");
      if (c_t >= 0)
        r.label = (row[c_t] == "1") ? 1 : 0;
      else
        r.label = lower(row[c_bm]) == "malignant" ? 1 : 0;
    }
    if (c_pat >= 0) r.patient_id = row[c_pat];
    if (c_les >= 0) r.lesion_id = row[c_les];
    if (c_sex >= 0) r.sex = norm_sex(row[c_sex]);
    if (c_age >= 0) {
      LF_ASSIGN_OR_RETURN(r.age, parse_age(t, i, c_age));
    }
    if (c_site >= 0) r.site = norm_site(row[c_site]);
    r.image_path = find_image(dirs, r.id);
    if (r.image_path.empty())
      return Status::error(where(t, i, c_id) + ": image '" + r.id + "' not found in " +
                           (dirs.empty() ? base : dirs[0]));
    ds.records.push_back(std::move(r));
  }
  return ds;
}

Result<Dataset> read_image_folder(const std::string& root, const LabelMap& labels) {
  if (!fs::is_directory(root)) return Status::error(root + ": not a directory");
  Dataset ds{"folder", root, {}};
  std::vector<fs::path> classes;
  for (const auto& e : fs::directory_iterator(root))
    if (e.is_directory()) classes.push_back(e.path());
  std::sort(classes.begin(), classes.end());
  if (classes.empty())
    return Status::error(root +
                         ": ImageFolder layout needs root/<class>/*.jpg, found no class folders");
  for (const auto& cdir : classes) {
    std::string cls = lower(cdir.filename().string());
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(cdir)) {
      if (e.is_regular_file() && is_image_path(e.path().string())) files.push_back(e.path());
    }
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      Record r;
      r.id = cls + "/" + f.stem().string();
      r.image_path = f.string();
      r.source = "folder";
      if (cls == "malignant") {
        r.dx = "unk";
        r.label = 1;
      } else if (cls == "benign") {
        r.dx = "unk";
        r.label = 0;
      } else {
        r.dx = cls;
        r.label = labels.label_of(cls);
      }
      ds.records.push_back(std::move(r));
    }
  }
  return ds;
}

Result<Dataset> load_dataset(const std::string& spec, const LabelMap& labels, uint64_t seed) {
  auto colon = spec.find(':');
  std::string kind = spec.substr(0, colon),
              arg = colon == std::string::npos ? "" : spec.substr(colon + 1);
  if (kind == "ham10000" || kind == "ham") {
    if (arg.empty()) return Status::error("dataset '" + spec + "': expected ham10000:PATH");
    return read_ham10000(arg, labels);
  }
  if (kind == "isic") {
    auto c2 = arg.find(':');
    return read_isic_csv(arg.substr(0, c2), c2 == std::string::npos ? "" : arg.substr(c2 + 1),
                         labels);
  }
  if (kind == "folder" || kind == "imagefolder") return read_image_folder(arg, labels);
  if (kind == "phantom") {
    int64_t n = 2000;
    if (!arg.empty()) {
      try {
        n = std::stoll(arg);
      } catch (...) {
        return Status::error("dataset '" + spec + "': expected phantom:N with N a number");
      }
    }
    if (n <= 0) return Status::error("dataset '" + spec + "': N must be positive");
    Dataset ds{"phantom", "", {}};
    static const char* kSites[] = {"back",    "trunk", "lower extremity", "upper extremity",
                                   "abdomen", "face",  "chest",           "scalp"};
    for (int64_t i = 0; i < n; ++i) {
      uint64_t s = derive_seed(seed, Stream::kPhantom, static_cast<uint64_t>(i));
      PhantomParams p = sample_phantom_params(s);
      std::mt19937_64 rng(s ^ 0xA5A5A5A5ULL);
      std::uniform_real_distribution<double> U(0, 1);
      Record r;
      char id[32];
      std::snprintf(id, sizeof id, "phantom_%06lld", static_cast<long long>(i));
      r.id = id;
      r.lesion_id = r.id;
      r.label = p.label();
      r.dx = r.label ? "mel" : "nv";
      r.sex = U(rng) < 0.5 ? "male" : "female";
      r.age = std::clamp(
          std::round((r.label ? 62 : 45) + 14 * (U(rng) + U(rng) + U(rng) - 1.5) * 1.6) / 5 * 5,
          5.0, 90.0);
      r.site = kSites[static_cast<int>(U(rng) * 8) % 8];
      r.dx_type = "phantom";
      r.source = "phantom";
      r.extra = {{"phantom", p.to_json()}};
      ds.records.push_back(std::move(r));
    }
    return ds;
  }
  return Status::error("dataset '" + spec + "': unknown kind '" + kind +
                       "' (use ham10000:PATH, isic:CSV[:IMAGE_DIR], folder:PATH or phantom[:N])");
}

json summarize(const Dataset& ds) {
  std::map<std::string, int64_t> dx, sex, age, site, label;
  std::set<std::string> groups;
  int64_t masks = 0;
  for (const auto& r : ds.records) {
    dx[r.dx]++;
    sex[r.sex]++;
    age[age_band(r.age)]++;
    site[r.site]++;
    label[r.label == 1 ? "malignant" : r.label == 0 ? "benign" : "unknown"]++;
    groups.insert(r.group_key());
    masks += !r.mask_path.empty() || r.source == "phantom";
  }
  return {{"kind", ds.kind},
          {"root", ds.root},
          {"images", ds.records.size()},
          {"lesions", groups.size()},
          {"with_mask", masks},
          {"dx", dx},
          {"label", label},
          {"sex", sex},
          {"age_band", age},
          {"site", site}};
}

std::string skin_band(int f) {
  if (f == 1 || f == 2) return "I-II";
  if (f == 3 || f == 4) return "III-IV";
  if (f == 5 || f == 6) return "V-VI";
  return "unknown";
}

std::map<std::string, std::string> record_groups(const Record& r, const nlohmann::json* cap) {
  std::map<std::string, std::string> g{
      {"sex", r.sex}, {"age", age_band(r.age)}, {"site", r.site}, {"skin", "unknown"}};
  if (cap && cap->contains("measured"))
    g["skin"] = skin_band((*cap)["measured"].value("fitzpatrick", 0));
  return g;
}

void LabeledSet::add(const uint8_t* px, int label, float weight, const std::string& id,
                     const std::string& source, std::map<std::string, std::string> g) {
  pixels.insert(pixels.end(), px, px + size * size * 3);
  labels.push_back(label);
  weights.push_back(weight);
  ids.push_back(id);
  sources.push_back(source);
  groups.push_back(std::move(g));
  cls.push_back(-1);
}

void LabeledSet::append(const LabeledSet& o, float scale) {
  if (size == 0) size = o.size;
  for (int64_t i = 0; i < o.count(); ++i) {
    add(o.image(i), o.labels[i], o.weights[i] * scale, o.ids[i], o.sources[i], o.groups[i]);
    cls.back() = o.cls[i];
  }
}

LabeledSet LabeledSet::subset(const std::vector<int64_t>& idx) const {
  LabeledSet s;
  s.size = size;
  for (auto i : idx) {
    s.add(image(i), labels[i], weights[i], ids[i], sources[i], groups[i]);
    s.cls.back() = cls[i];
  }
  return s;
}

}  // namespace lf
