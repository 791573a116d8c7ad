// The bad-input corpus. Each case makes its own bad file (or takes one from tests/data/corpus),
// runs the real CLI on it and checks: the exit code; a message that names the input and the
// problem; that a refused input leaves no output under the final name, and that an input which
// is skipped and counted (a corrupt image in a dataset) leaves the rest prepared. One ctest entry
// per case (BadInputCorpus/Case.Run/<name>), so `ctest -R BadInputCorpus` gives the count.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <sstream>

#include "test_util.h"

namespace lf {
namespace {

namespace fs = std::filesystem;
using test::CliRun;
using test::run_cli;

void write(const std::string& path, const std::string& bytes) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << bytes;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream os;
  os << in.rdbuf();
  return os.str();
}

// A 64x64 skin-coloured square with a dark round lesion, of the given depth/channels.
cv::Mat lesion(int size = 64) {
  cv::Mat m(size, size, CV_8UC3, cv::Scalar(150, 170, 215));
  cv::circle(m, {size / 2, size / 2}, size / 4, cv::Scalar(40, 60, 110), -1);
  return m;
}

std::string encode(const cv::Mat& m, const std::string& ext) {
  std::vector<uchar> b;
  EXPECT_TRUE(cv::imencode(ext, m, b)) << ext;
  return std::string(b.begin(), b.end());
}

uint32_t crc32(const std::string& s) {
  uint32_t c = 0xFFFFFFFFu;
  for (unsigned char ch : s) {
    c ^= ch;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return c ^ 0xFFFFFFFFu;
}

void put_be32(std::string& b, size_t at, uint32_t v) {
  for (int k = 0; k < 4; ++k) b[at + k] = static_cast<char>((v >> (24 - 8 * k)) & 0xFF);
}

// A valid 16x16 PNG whose IHDR (with a correct CRC) claims w x h pixels.
std::string png_claiming(uint32_t w, uint32_t h) {
  std::string b = encode(lesion(16), ".png");
  put_be32(b, 16, w);
  put_be32(b, 20, h);
  put_be32(b, 29, crc32(b.substr(12, 17)));
  return b;
}

// A one-frame GIF89a with a graphic-control (animation) block.
const std::string kGif(
    "GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,"
    "\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00;",
    43);

struct Case {
  std::string name;
  // Writes the inputs under dir and returns the CLI arguments.
  std::function<std::string(const std::string& dir)> setup;
  int exit_code;  // 0: accepted (or skipped and counted); 1: refused; -1: any non-zero
  std::vector<std::string> must_say;  // each must appear in the output
  std::string absent;                 // relative to dir: must not exist after the run
  std::function<void(const std::string& dir)> check;  // further checks (may be empty)
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

// ---- images in an ImageFolder dataset: mel/good.jpg, nv/good.jpg and nv/<name> ----------------
void expect_prepared(const std::string& dir, int ok, int skipped) {
  auto j = nlohmann::json::parse(slurp(dir + "/out/prepare.json"));
  EXPECT_EQ(j.value("ok", -1), ok) << j.dump();
  EXPECT_EQ(j.value("skipped", -1), skipped) << j.dump();
  EXPECT_TRUE(fs::exists(dir + "/out/images.safetensors"));
}

Case image_case(const std::string& name, std::function<std::string()> bytes, bool readable,
                std::vector<std::string> say) {
  Case c;
  c.name = "image_" + name;
  c.setup = [name, bytes](const std::string& dir) {
    write(dir + "/ds/mel/good.jpg", encode(lesion(), ".jpg"));
    write(dir + "/ds/nv/good.jpg", encode(lesion(), ".jpg"));
    write(dir + "/ds/nv/" + name, bytes());
    return "--threads 1 data prepare --dataset folder:" + dir + "/ds --size 16 --out " + dir +
           "/out";
  };
  c.exit_code = 0;
  if (!readable) say.insert(say.begin(), {"skipped: ", "/ds/nv/" + name + ": "});
  c.must_say = say;
  c.check = [readable](const std::string& dir) {
    expect_prepared(dir, readable ? 3 : 2, !readable);
  };
  return c;
}

std::vector<Case> image_cases() {
  auto good_jpg = [] { return encode(lesion(96), ".jpg"); };
  return {
      image_case("zero.jpg", [] { return std::string(); }, false, {"empty (0 bytes)"}),
      image_case("truncated.jpg",
                 [=] {
                   auto b = good_jpg();
                   return b.substr(0, b.size() / 2);
                 },
                 false, {"truncated JPEG"}),
      image_case("truncated.png", [] { return encode(lesion(), ".png").substr(0, 60); }, false,
                 {"not a decodable image"}),
      image_case("text.jpg", [] { return std::string("not an image at all\n"); }, false,
                 {"not a decodable image"}),
      image_case("one_pixel.png",
                 [] { return encode(cv::Mat(1, 1, CV_8UC3, cv::Scalar(9, 9, 9)), ".png"); }, false,
                 {"only 1x1 pixels"}),
      image_case("huge_header.png", [] { return png_claiming(20000, 20000); }, false,
                 {"20000x20000", "limit"}),
      image_case("animated.gif", [] { return kGif; }, false, {"GIF", "convert it to PNG"}),
      // Readable despite the oddity: converted to 8-bit BGR and prepared.
      image_case("png_named.jpg", [] { return encode(lesion(), ".png"); }, true, {}),
      image_case("sixteen_bit.png",
                 [] {
                   cv::Mat m;
                   lesion().convertTo(m, CV_16UC3, 257.0);
                   return encode(m, ".png");
                 },
                 true, {}),
      image_case("gray.png",
                 [] {
                   cv::Mat g;
                   cv::cvtColor(lesion(), g, cv::COLOR_BGR2GRAY);
                   return encode(g, ".png");
                 },
                 true, {}),
      image_case("alpha.png",
                 [] {
                   cv::Mat a;
                   cv::cvtColor(lesion(), a, cv::COLOR_BGR2BGRA);
                   return encode(a, ".png");
                 },
                 true, {}),
      image_case("cmyk.jpg", [] { return slurp(test::data_dir() + "/corpus/cmyk.jpg"); }, true, {}),
      {"image_folder_all_unreadable",
       [](const std::string& dir) {
         write(dir + "/ds/nv/a.jpg", "junk");
         write(dir + "/ds/nv/b.png", "");
         return "--threads 1 data prepare --dataset folder:" + dir + "/ds --size 16 --out " + dir +
                "/out";
       },
       1,
       {"none of the 2 images could be read"},
       "out",
       {}},
  };
}

// ---- HAM10000 metadata CSV (tests/data/good with its metadata rewritten) ----------------------
const std::string kHamHeader = "lesion_id,image_id,dx,dx_type,age,sex,localization\n";
const std::string kHamRows =
    "HAM_A,IMG_0001,mel,histo,60.0,male,back\n"
    "HAM_A,IMG_0002,mel,histo,60.0,male,back\n"
    "HAM_B,IMG_0003,nv,follow_up,,unknown,unknown\n";

Case csv_case(const std::string& name, std::string csv, int code, std::vector<std::string> say) {
  Case c;
  c.name = "ham_csv_" + name;
  c.setup = [csv](const std::string& dir) {
    fs::copy(test::data_dir() + "/good", dir + "/ham", fs::copy_options::recursive);
    write(dir + "/ham/HAM10000_metadata.csv", csv);
    return "data split --dataset ham10000:" + dir + "/ham --out " + dir + "/out.csv";
  };
  c.exit_code = code;
  if (code != 0) say.insert(say.begin(), "HAM10000_metadata.csv");
  c.must_say = say;
  if (code != 0) c.absent = "out.csv";
  c.check = [code](const std::string& dir) {
    if (code == 0) {
      EXPECT_TRUE(fs::exists(dir + "/out.csv"));
    }
  };
  return c;
}

std::string replace_first(std::string s, const std::string& from, const std::string& to) {
  s.replace(s.find(from), from.size(), to);
  return s;
}

std::vector<Case> csv_cases() {
  const std::string good = kHamHeader + kHamRows;
  std::string crlf;
  for (char ch : good) crlf += ch == '\n' ? std::string("\r\n") : std::string(1, ch);
  return {
      csv_case("missing_column", "lesion_id,image_id,dx,age,sex,localization\n", 1,
               {"missing required column 'dx_type'"}),
      csv_case("duplicate_id", good + "HAM_C,IMG_0001,nv,histo,40,male,back\n", 1,
               {":5:", "'IMG_0001' is listed twice (first at line 2)"}),
      csv_case("negative_age", replace_first(good, "60.0", "-4"), 1, {":2:", "invalid age '-4'"}),
      csv_case("text_age", replace_first(good, "60.0", "sixty"), 1, {"invalid age 'sixty'"}),
      csv_case("unknown_dx", replace_first(good, ",nv,", ",mole,"), 1,
               {":4:", "unknown dx code 'mole'"}),
      csv_case("not_utf8",
               replace_first(good, "back",
                             "b\xe4"
                             "ck"),
               1, {":2:", "not valid UTF-8"}),
      csv_case("empty", "", 1, {"empty CSV file"}),
      csv_case("header_only", kHamHeader, 1, {"no rows after the header"}),
      csv_case("short_row", kHamHeader + "HAM_A,IMG_0001,mel\n", 1,
               {":2:", "expected 7 fields, found 3"}),
      csv_case("unterminated_quote", replace_first(good, "back", "\"back"), 1,
               {"unterminated quoted field"}),
      csv_case("image_not_found", good + "HAM_C,IMG_9999,nv,histo,40,male,back\n", 1,
               {"'IMG_9999' not found"}),
      // Accepted: a byte-order mark, CRLF line ends, "nan" for an unknown age (as pandas writes).
      csv_case("bom", "\xEF\xBB\xBF" + good, 0, {"train"}),
      csv_case("crlf", crlf, 0, {"train"}),
      csv_case("nan_age", replace_first(good, "60.0", "nan"), 0, {"train"}),
      {"isic_csv_no_id_column",
       [](const std::string& dir) {
         write(dir + "/isic/meta.csv", "name,MEL,NV\nIMG_0001,1.0,0.0\n");
         fs::copy(test::data_dir() + "/good/images", dir + "/isic/images");
         return "data split --dataset isic:" + dir + "/isic/meta.csv --out " + dir + "/out.csv";
       },
       1,
       {"meta.csv", "missing required column 'image_id'"},
       "out.csv",
       {}},
      {"isic_csv_duplicate_image",
       [](const std::string& dir) {
         write(dir + "/isic/meta.csv",
               "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK\n"
               "IMG_0001,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n"
               "IMG_0001,0.0,1.0,0.0,0.0,0.0,0.0,0.0,0.0,0.0\n");
         fs::copy(test::data_dir() + "/good/images", dir + "/isic/images");
         return "data split --dataset isic:" + dir + "/isic/meta.csv --out " + dir + "/out.csv";
       },
       1,
       {"meta.csv:3:", "listed twice"},
       "out.csv",
       {}},
  };
}

// ---- captions, splits, checkpoints: a 40-image phantom cache and a 1-step tiny generator -------
void phantom_cache(const std::string& dir) {
  ASSERT_EQ(run_cli("--threads 1 data prepare --dataset phantom:40 --size 16 --out " + dir +
                    "/ph --quiet")
                .exit_code,
            0);
  ASSERT_EQ(run_cli("data split --dataset phantom:40 --out " + dir + "/splits.csv").exit_code, 0);
  ASSERT_EQ(run_cli("--threads 1 caption --dataset phantom:40 --out " + dir + "/caps.jsonl --quiet")
                .exit_code,
            0);
}

std::string train_args(const std::string& dir) {
  return "--threads 1 train --data " + dir +
         "/ph --preset tiny --steps 1 --batch 4 "
         "--sample-every 0 --val-every 0 --out " +
         dir + "/out";
}

// A one-step tiny generator at dir/<name>/ema.safetensors.
void tiny_generator(const std::string& dir, const std::string& name, int seed) {
  CliRun r = run_cli("--seed " + std::to_string(seed) + " --threads 1 train --data " + dir +
                     "/ph --preset tiny --steps 1 --batch 4 --sample-every 0 --val-every 0 --out " +
                     dir + "/" + name);
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> out;
  std::istringstream in(slurp(path));
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

std::string join(const std::vector<std::string>& ls) {
  std::string s;
  for (auto& l : ls) s += l + "\n";
  return s;
}

// A `train` run on a copy of the phantom cache's `source` file (caps.jsonl or splits.csv) that
// `edit` has spoilt, given with `flag`.
Case edited_file_case(const std::string& name, const std::string& source, const std::string& flag,
                      std::function<void(std::vector<std::string>&)> edit,
                      std::vector<std::string> say) {
  const std::string bad = "bad_" + source;
  Case c;
  c.name = name;
  c.setup = [=](const std::string& dir) {
    phantom_cache(dir);
    auto ls = lines_of(dir + "/" + source);
    edit(ls);
    write(dir + "/" + bad, join(ls));
    return train_args(dir) + " " + flag + " " + dir + "/" + bad;
  };
  c.exit_code = 1;
  say.insert(say.begin(), bad);
  c.must_say = say;
  c.absent = "out";
  return c;
}

Case captions_case(const std::string& name, std::function<void(std::vector<std::string>&)> edit,
                   std::vector<std::string> say) {
  return edited_file_case("captions_" + name, "caps.jsonl", "--captions", edit, say);
}

Case splits_case(const std::string& name, std::function<void(std::vector<std::string>&)> edit,
                 std::vector<std::string> say) {
  return edited_file_case("splits_" + name, "splits.csv", "--splits", edit, say);
}

nlohmann::json first_record(const std::vector<std::string>& ls) {
  return nlohmann::json::parse(ls[0]);
}

std::vector<std::string> split_fields(const std::string& line) {
  std::vector<std::string> f;
  std::istringstream in(line);
  for (std::string x; std::getline(in, x, ',');) f.push_back(x);
  return f;
}

std::vector<Case> text_cases() {
  return {
      captions_case("bad_json_line",
                    [](auto& ls) { ls.insert(ls.begin() + 3, "{\"id\": \"x\", "); },
                    {"bad_caps.jsonl:4:", "invalid JSON"}),
      captions_case("missing_id",
                    [](auto& ls) {
                      auto j = first_record(ls);
                      j.erase("id");
                      ls[0] = j.dump();
                    },
                    {":1:", "no 'id'"}),
      captions_case("caption_not_a_string",
                    [](auto& ls) {
                      auto j = first_record(ls);
                      j["caption"] = 5;
                      ls[0] = j.dump();
                    },
                    {":1:", "'caption' must be a string"}),
      captions_case("caption_100kB",
                    [](auto& ls) {
                      auto j = first_record(ls);
                      j["caption"] = std::string(100000, 'a');
                      ls[0] = j.dump();
                    },
                    {":1:", "100000 characters", "limit of 4096"}),
      captions_case("duplicate_id", [](auto& ls) { ls.push_back(ls[0]); },
                    {":41:", "second caption"}),
      splits_case("lesion_in_two_splits",
                  [](auto& ls) {
                    auto a = split_fields(ls[1]), b = split_fields(ls[2]);
                    b[1] = a[1];  // b joins a's lesion group, in another split
                    b[4] = a[4] == "train" ? "test" : "train";
                    ls[2] = b[0] + "," + b[1] + "," + b[2] + "," + b[3] + "," + b[4];
                  },
                  {":3:", "lesion group", "in two splits"}),
      splits_case("unknown_ids", [](auto& ls) { ls.push_back("ghost_1,ghost_1,nv,0,train"); },
                  {"'ghost_1' is not in the data"}),
      splits_case("missing_image", [](auto& ls) { ls.erase(ls.begin() + 5); },
                  {"no split for image"}),
      splits_case("unknown_split_name",
                  [](auto& ls) { ls[1] = ls[1].substr(0, ls[1].rfind(',')) + ",holdout"; },
                  {":2:", "expected train/val/test, found 'holdout'"}),
  };
}

std::string sample_args(const std::string& dir, const std::string& ckpt) {
  return "--threads 1 sample --checkpoint " + ckpt + " --prompt nevus --n 1 --steps 2 --out " +
         dir + "/out";
}

std::vector<Case> checkpoint_cases() {
  return {
      {"checkpoint_truncated",
       [](const std::string& dir) {
         phantom_cache(dir);
         tiny_generator(dir, "gen", 0);
         write(dir + "/cut.safetensors", slurp(dir + "/gen/ema.safetensors").substr(0, 3000));
         return sample_args(dir, dir + "/cut.safetensors");
       },
       1,
       {"cut.safetensors", "exceeds file size"},
       "out",
       {}},
      {"checkpoint_garbage",
       [](const std::string& dir) {
         write(dir + "/junk.safetensors", std::string(4096, '\x7f'));
         return sample_args(dir, dir + "/junk.safetensors");
       },
       1,
       {"junk.safetensors"},
       "out",
       {}},
      {"checkpoint_wrong_kind",
       [](const std::string& dir) {
         return sample_args(dir, test::src_dir() + "/models/ham_ref_cnn64.safetensors");
       },
       1,
       {"ham_ref_cnn64.safetensors", "not a lesionflow generator checkpoint"},
       "out",
       {}},
      {"checkpoint_wrong_shapes",
       [](const std::string& dir) {
         phantom_cache(dir);
         tiny_generator(dir, "gen", 0);
         std::string b = slurp(dir + "/gen/ema.safetensors");
         uint64_t n = 0;
         for (int k = 7; k >= 0; --k) n = (n << 8) | static_cast<unsigned char>(b[k]);
         auto h = nlohmann::json::parse(b.substr(8, n));
         for (auto& [k, v] : h.items()) {  // transpose the shape of one non-square matrix
           if (k == "__metadata__" || v["shape"].size() != 2 || v["shape"][0] == v["shape"][1])
             continue;
           v["shape"] = {v["shape"][1], v["shape"][0]};
           break;
         }
         std::string hs = h.dump();
         EXPECT_LE(hs.size(), n);
         hs.resize(n, ' ');
         write(dir + "/shape.safetensors", b.substr(0, 8) + hs + b.substr(8 + n));
         return sample_args(dir, dir + "/shape.safetensors");
       },
       1,
       {"shape.safetensors", "has shape", "model expects"},
       "out",
       {}},
      {"lora_for_another_base",
       [](const std::string& dir) {
         phantom_cache(dir);
         tiny_generator(dir, "base_a", 0);
         tiny_generator(dir, "base_b", 5);
         CliRun ft = run_cli(
             "--threads 1 finetune --base " + dir + "/base_a/ema.safetensors --data " + dir +
             "/ph --steps 1 --batch 4 --sample-every 0 --val-every 0 --out " + dir + "/lora");
         EXPECT_EQ(ft.exit_code, 0) << ft.output;
         return sample_args(dir, dir + "/base_b/ema.safetensors") + " --lora " + dir +
                "/lora/ema.safetensors";
       },
       1,
       {"lora/ema.safetensors", "adapter was trained on base", "refusing"},
       "out",
       {}},
  };
}

std::vector<Case> config_cases() {
  auto exp = [](const std::string& name, std::string json, std::vector<std::string> say) {
    return Case{"experiment_config_" + name,
                [json](const std::string& dir) {
                  write(dir + "/exp.json", replace_first(json, "OUT", dir + "/out"));
                  return "--threads 1 experiment --config " + dir + "/exp.json";
                },
                1,
                say,
                "out",
                {}};
  };
  std::vector<std::string> unknown = {"exp.json", "unknown key 'sedds'"};
  return {
      exp("unknown_key", R"({"data": "d", "out": "OUT", "sedds": [0]})", unknown),
      exp("nested_unknown_key", R"({"data": "d", "out": "OUT", "synth": {"totl": 5}})",
          {"exp.json", "unknown key 'synth.totl'"}),
      exp("wrong_type", R"({"data": "d", "out": "OUT", "seeds": "zero"})",
          {"exp.json", "'seeds' must be an array of integers"}),
      exp("not_json", R"({"data": "d", "out": "OUT",)", {"exp.json", "not valid JSON"}),
      exp("ratio_not_positive", R"({"data": "d", "out": "OUT", "synthetic_mix_ratios": [1, 0]})",
          {"exp.json", "synthetic_mix_ratios must be > 0, not 0"}),
      exp("vary_unknown", R"({"data": "d", "out": "OUT", "synth": {"vary": ["size", "hair"]}})",
          {"exp.json", "synth.vary takes \"size\" and/or \"skin\", not \"hair\""}),
      exp("emphasis_unknown", R"({"data": "d", "out": "OUT", "synth": {"emphasis": "hard"}})",
          {"exp.json",
           "synth.emphasis must be \"none\", \"abcd-discordant\" or "
           "\"abcd-discordant-malignant\", not \"hard\""}),
      exp("emphasis_strength_negative",
          R"({"data": "d", "out": "OUT", "synth": {"emphasis_strength": -1}})",
          {"exp.json", "synth.emphasis_strength must be >= 0, not -1"}),
      exp("adapter_not_a_file",
          R"({"data": "d", "out": "OUT", "synth": {"adapters": {"df": 0.5}}})",
          {"exp.json", "synth.adapters.df must be the adapter file", "not 0.5"}),
      exp("classes_unknown", R"({"data": "d", "out": "OUT", "classifier": {"classes": "site"}})",
          {"exp.json", "classifier.classes must be \"binary\" or \"dx\", not \"site\""}),
      exp("equal_steps_not_bool", R"({"data": "d", "out": "OUT", "equal_steps_control": 1})",
          {"exp.json", "'equal_steps_control' must be true or false, found 1"}),
      exp("extra_archs_unknown",
          R"({"data": "d", "out": "OUT", "classifier": {"extra_archs": "twice"}})",
          {"exp.json", "classifier.extra_archs must be \"once\" or \"all\""}),
      {"flags_config_unknown_key",
       [](const std::string& dir) {
         write(dir + "/flags.toml", "seed = 3\nthreds = 1\n");
         return "--config " + dir + "/flags.toml data inspect --dataset phantom:10";
       },
       -1,
       {"threds"},
       "",
       {}},  // CLI11's own message and exit code for a config error
  };
}

std::vector<Case> all_cases() {
  std::vector<Case> all;
  for (auto part : {image_cases(), csv_cases(), text_cases(), checkpoint_cases(), config_cases()})
    all.insert(all.end(), part.begin(), part.end());
  return all;
}

class Corpus : public ::testing::TestWithParam<Case> {};

TEST_P(Corpus, Run) {
  const Case& c = GetParam();
  const std::string dir = test::tmp_dir("bad_input_" + c.name);
  const std::string args = c.setup(dir);
  if (HasFatalFailure()) return;
  CliRun r = run_cli(args);
  if (c.exit_code >= 0) {
    EXPECT_EQ(r.exit_code, c.exit_code) << args << "\n" << r.output;
  } else {
    EXPECT_NE(r.exit_code, 0) << args << "\n" << r.output;
  }
  for (const auto& s : c.must_say)
    EXPECT_NE(r.output.find(s), std::string::npos) << "expected '" << s << "' in:\n" << r.output;
  EXPECT_EQ(r.output.find("unexpected exception"), std::string::npos) << r.output;
  if (!c.absent.empty()) {
    EXPECT_FALSE(fs::exists(dir + "/" + c.absent)) << c.absent << " left behind by: " << args;
  }
  if (c.check) c.check(dir);
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string n = info.param.name;
  for (auto& ch : n)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

INSTANTIATE_TEST_SUITE_P(BadInputCorpus, Corpus, ::testing::ValuesIn(all_cases()), case_name);

TEST(BadInputCorpusSize, AtLeastThirtyCases) {
  auto all = all_cases();
  EXPECT_GE(all.size(), 30u);
  std::set<std::string> names;
  for (const auto& c : all) EXPECT_TRUE(names.insert(case_name({c, 0})).second) << c.name;
}

}  // namespace
}  // namespace lf
