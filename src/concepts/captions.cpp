#include "lesionflow/captions.h"

#include <algorithm>

#include "lesionflow/jsonl.h"
#include "lesionflow/phantom.h"

namespace lf {

std::string number_word(int n) {
  static const char* k[] = {"zero", "one", "two", "three", "four", "five", "six", "seven", "eight"};
  return n >= 0 && n <= 8 ? k[n] : std::to_string(n);
}

std::string roman(int n) {
  static const char* k[] = {"?", "I", "II", "III", "IV", "V", "VI"};
  return n >= 1 && n <= 6 ? k[n] : "?";
}

CaptionFacts metadata_facts(const Record& r) {
  CaptionFacts f;
  f.dx = r.dx;
  f.label = r.label;
  f.age = r.age;
  f.sex = r.sex;
  f.site = r.site;
  return f;
}

CaptionFacts facts_from_record(const Record& r) {
  CaptionFacts f = metadata_facts(r);
  if (r.extra.contains("phantom")) {
    PhantomParams p = PhantomParams::from_json(r.extra["phantom"]);
    f.asymmetry = p.asymmetry_axes;
    f.border = p.border_score();
    for (int c = 0; c < kNumColours; ++c)
      if (p.colours & (1u << c)) f.colours.push_back(colour_names()[c]);
    for (int k = 0; k < kNumStructures; ++k)
      if (p.structures & (1u << k)) f.structures.push_back(structure_names()[k]);
    f.size_fraction = p.diameter;
    f.fitzpatrick = p.fitzpatrick;
  }
  return f;
}

namespace {
std::string join_list(const std::vector<std::string>& v) {
  if (v.empty()) return "";
  if (v.size() == 1) return v[0];
  std::string s;
  for (size_t i = 0; i + 1 < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s + " and " + v.back();
}
template <class R>
const char* pick(R& rng, std::initializer_list<const char*> options, bool canonical) {
  if (canonical) return *options.begin();
  std::uniform_int_distribution<size_t> d(0, options.size() - 1);
  return *(options.begin() + d(rng));
}
}  // namespace

std::string compose_caption(const CaptionFacts& f, uint64_t variant_seed) {
  const bool canon = variant_seed == 0;
  std::mt19937_64 rng(variant_seed);
  std::string head =
      pick(rng, {"dermoscopic image of", "dermoscopy of", "dermatoscopic photo of"}, canon);
  std::string what;
  if (!f.dx.empty() && f.dx != "unk") {
    std::string name = dx_long_name(f.dx);
    // Say benign/malignant once ("a benign keratosis", not "a benign benign keratosis").
    bool says =
        name.find("benign") != std::string::npos || name.find("malignant") != std::string::npos;
    if (f.label == 1 && !says)
      what = "a malignant " + name;
    else if (f.label == 0 && !says)
      what = "a benign " + name;
    else
      what = "a " + name;
  } else {
    what = f.label == 1 ? "a malignant lesion" : f.label == 0 ? "a benign lesion" : "a skin lesion";
  }
  std::string s = head + " " + what;
  if (!f.site.empty() && f.site != "unknown") s += " on the " + f.site;
  std::string person;
  if (f.age >= 0) person = std::to_string(static_cast<int>(f.age)) + "-year-old ";
  if (f.sex == "male")
    person += "man";
  else if (f.sex == "female")
    person += "woman";
  else if (!person.empty())
    person += "patient";
  if (!person.empty())
    s += std::string(" of a") +
         (person[0] == '8' || person.rfind("11-", 0) == 0 || person.rfind("18-", 0) == 0 ? "n "
                                                                                         : " ") +
         person;
  std::vector<std::string> clauses;
  if (f.asymmetry == 0)
    clauses.push_back(pick(rng, {"symmetric", "symmetric in both axes"}, canon));
  else if (f.asymmetry == 1)
    clauses.push_back(pick(rng, {"asymmetric in one axis", "asymmetry in one axis"}, canon));
  else if (f.asymmetry == 2)
    clauses.push_back(pick(rng, {"asymmetric in two axes", "asymmetry in both axes"}, canon));
  if (f.border >= 0) {
    if (f.border <= 1)
      clauses.push_back(pick(rng, {"regular border", "smooth sharp border"}, canon));
    else if (f.border <= 4)
      clauses.push_back(pick(rng, {"slightly irregular border", "mildly irregular border"}, canon));
    else
      clauses.push_back(pick(rng, {"irregular border", "ragged irregular border"}, canon));
  }
  if (!f.colours.empty()) {
    int n = static_cast<int>(f.colours.size());
    clauses.push_back(number_word(n) + (n == 1 ? " colour: " : " colours: ") +
                      join_list(f.colours));
  }
  if (!f.structures.empty()) clauses.push_back(join_list(f.structures));
  if (f.size_fraction > 0) {
    const char* sz = f.size_fraction < 0.3    ? "small"
                     : f.size_fraction < 0.55 ? "medium-sized"
                                              : "large";
    clauses.push_back(std::string(sz) + " lesion");
  }
  if (f.fitzpatrick >= 1) clauses.push_back("fitzpatrick type " + roman(f.fitzpatrick) + " skin");
  if (!canon && clauses.size() > 1) std::shuffle(clauses.begin(), clauses.end(), rng);
  for (size_t i = 0; i < clauses.size(); ++i) s += (i == 0 ? "; " : ", ") + clauses[i];
  return s;
}

}  // namespace lf

namespace lf {

std::string apply_template(const std::string& tmpl, const CaptionFacts& f) {
  auto value = [&](const std::string& key) -> std::string {
    if (key == "dx") return f.dx.empty() || f.dx == "unk" ? "" : dx_long_name(f.dx);
    if (key == "malignancy") return f.label == 1 ? "malignant" : f.label == 0 ? "benign" : "";
    if (key == "site") return f.site == "unknown" ? "" : f.site;
    if (key == "age") return f.age < 0 ? "" : std::to_string(static_cast<int>(f.age));
    if (key == "sex") return f.sex == "unknown" ? "" : f.sex;
    if (key == "asymmetry")
      return f.asymmetry < 0    ? ""
             : f.asymmetry == 0 ? "symmetric"
             : f.asymmetry == 1 ? "asymmetric in one axis"
                                : "asymmetric in two axes";
    if (key == "border")
      return f.border < 0    ? ""
             : f.border <= 1 ? "regular border"
             : f.border <= 4 ? "slightly irregular border"
                             : "irregular border";
    if (key == "colours") return join_list(f.colours);
    if (key == "structures") return join_list(f.structures);
    if (key == "size")
      return f.size_fraction <= 0     ? ""
             : f.size_fraction < 0.3  ? "small"
             : f.size_fraction < 0.55 ? "medium-sized"
                                      : "large";
    if (key == "skin")
      return f.fitzpatrick < 1 ? "" : "fitzpatrick type " + roman(f.fitzpatrick) + " skin";
    return "{" + key + "}";
  };
  // Expand placeholders; track whether each [group] had an unknown one.
  std::string out, group;
  bool in_group = false, group_ok = true;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    char c = tmpl[i];
    std::string& dst = in_group ? group : out;
    if (c == '[' && !in_group) {
      in_group = true;
      group.clear();
      group_ok = true;
      continue;
    }
    if (c == ']' && in_group) {
      if (group_ok) out += group;
      in_group = false;
      continue;
    }
    if (c == '{') {
      size_t e = tmpl.find('}', i);
      if (e != std::string::npos) {
        std::string v = value(tmpl.substr(i + 1, e - i - 1));
        if (v.empty()) group_ok = false;
        dst += v;
        i = e;
        continue;
      }
    }
    dst += c;
  }
  // Tidy doubled spaces left by empty placeholders outside groups.
  std::string tidy;
  for (char c : out)
    if (!(c == ' ' && !tidy.empty() && tidy.back() == ' ')) tidy += c;
  while (!tidy.empty() && tidy.back() == ' ') tidy.pop_back();
  return tidy;
}

Result<std::map<std::string, nlohmann::json>> read_caption_file(const std::string& path) {
  std::map<std::string, nlohmann::json> m;
  if (path.empty()) return m;
  std::vector<int> lines;
  LF_ASSIGN_OR_RETURN(auto recs, read_jsonl(path, &lines));
  for (size_t i = 0; i < recs.size(); ++i) {
    const std::string at = path + ":" + std::to_string(lines[i]) + ": ";
    auto& r = recs[i];
    if (!r.is_object()) return Status::error(at + "expected a JSON object {\"id\", \"caption\"}");
    for (const char* key : {"id", "caption"}) {
      if (!r.contains(key)) return Status::error(at + "record has no '" + key + "'");
      if (!r[key].is_string())
        return Status::error(at + "'" + key + "' must be a string, found " + r[key].type_name());
    }
    std::string id = r["id"].get<std::string>();
    if (id.empty()) return Status::error(at + "empty 'id'");
    const size_t n = r["caption"].get_ref<const std::string&>().size();
    if (n > kMaxCaptionChars)
      return Status::error(at + "caption of image '" + id + "' is " + std::to_string(n) +
                           " characters, above the limit of " + std::to_string(kMaxCaptionChars));
    if (m.count(id)) return Status::error(at + "image '" + id + "' has a second caption");
    m.emplace(std::move(id), std::move(r));
  }
  return m;
}

nlohmann::json caption_phrase_profile(const std::vector<std::string>& captions) {
  nlohmann::json out = nlohmann::json::object();
  for (const auto& phrase : structure_names()) {
    int64_t n = 0;
    for (const auto& c : captions) n += c.find(phrase) != std::string::npos;
    out[phrase] = captions.empty() ? 0.0 : static_cast<double>(n) / captions.size();
  }
  return out;
}

std::string without_phrases(std::string caption, const std::vector<std::string>& phrases) {
  auto replace_all = [&](const std::string& from, const std::string& to) {
    for (size_t at = caption.find(from); at != std::string::npos; at = caption.find(from, at)) {
      caption.replace(at, from.size(), to);
      at += to.size();
    }
  };
  for (const auto& x : phrases) {
    if (x.empty()) continue;
    // Inside a list first (the joins a list uses), then as its last or only element.
    replace_all(", " + x + " and ", " and ");
    replace_all(x + ", ", "");
    replace_all(x + " and ", "");
    replace_all(" and " + x, "");
    replace_all(", " + x, "");
    replace_all("; " + x, ";");
    replace_all(x, "");
  }
  replace_all(";,", ";");
  replace_all("; ;", ";");
  while (!caption.empty() &&
         (caption.back() == ';' || caption.back() == ' ' || caption.back() == ','))
    caption.pop_back();
  // "; " after the subject clause when the removed phrase was the first of its list.
  replace_all(";  ", "; ");
  const size_t semi = caption.find(';');
  if (semi != std::string::npos && semi + 1 < caption.size() && caption[semi + 1] != ' ')
    caption.insert(semi + 1, " ");
  return caption;
}

}  // namespace lf
