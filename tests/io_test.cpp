#include "lesionflow/io.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "lesionflow/jsonl.h"
#include "lesionflow/rng.h"
#include "lesionflow/scratch.h"
#include "test_util.h"

namespace lf {

TEST(Safetensors, RoundTripIsBitExactAndReadableHeader) {
  SafeTensors st;
  float v[6] = {1.5f, -2.f, 3.25f, 0.f, 1e-7f, -1e9f};
  st.tensors["a.weight"] =
      RawTensor{DType::kF32, {2, 3}, std::string(reinterpret_cast<char*>(v), sizeof v)};
  st.tensors["b"] = RawTensor{DType::kU8, {4}, std::string("\x01\x02\x03\xff", 4)};
  st.metadata["config"] = "{\"x\":1}";
  std::string path = test::tmp_dir("st") + "/t.safetensors";
  ASSERT_TRUE(save_safetensors(path, st).ok());
  auto back = load_safetensors(path);
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->metadata["config"], "{\"x\":1}");
  ASSERT_EQ(back->tensors.size(), 2u);
  EXPECT_EQ(back->tensors["a.weight"].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(back->tensors["a.weight"].data, st.tensors["a.weight"].data);
  EXPECT_EQ(back->tensors["b"].data, st.tensors["b"].data);
  // Data section is 8-byte aligned.
  auto bytes = read_file(path);
  uint64_t n;
  std::memcpy(&n, bytes->data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
}

TEST(Safetensors, TruncatedFileIsAClearError) {
  SafeTensors st;
  st.tensors["w"] = RawTensor{DType::kF32, {100}, std::string(400, '\0')};
  std::string bytes = serialize_safetensors(st);
  auto r = parse_safetensors(bytes.substr(0, bytes.size() - 10), "x.safetensors");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("x.safetensors"), std::string::npos);
  EXPECT_NE(r.status().message().find("out of range"), std::string::npos);
  EXPECT_FALSE(parse_safetensors("abc", "y").ok());
}

TEST(Csv, QuotesAndLineNumbers) {
  std::string dir = test::tmp_dir("csv");
  ASSERT_TRUE(
      write_file_atomic(dir + "/a.csv", "a,b\r\n1,\"x,\"\"y\"\"\"\n\n2,\"multi\nline\"\n3,4,5\n")
          .ok());
  auto t = read_csv(dir + "/a.csv");
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("a.csv:6"), std::string::npos) << t.status().message();
  ASSERT_TRUE(
      write_file_atomic(dir + "/b.csv", "a,b\n1,\"x,\"\"y\"\"\"\n2,\"multi\nline\"\n").ok());
  auto u = read_csv(dir + "/b.csv");
  ASSERT_TRUE(u.ok()) << u.status().message();
  ASSERT_EQ(u->rows.size(), 2u);
  EXPECT_EQ(u->rows[0][1], "x,\"y\"");
  EXPECT_EQ(u->rows[1][1], "multi\nline");
  EXPECT_EQ(u->line_numbers[1], 3);
}

TEST(ImageIo, BadFilesGiveNamedErrors) {
  std::string d = test::data_dir() + "/bad/images/";
  for (const char* f :
       {"IMG_0004.jpg", "IMG_0005.jpg", "IMG_0006.jpg", "IMG_0007.png", "missing.jpg"}) {
    auto r = read_image(d + f);
    ASSERT_FALSE(r.ok()) << f;
    EXPECT_NE(r.status().message().find(f), std::string::npos) << r.status().message();
  }
  EXPECT_TRUE(read_image(d + "IMG_0008.jpg").ok());
}

}  // namespace lf

namespace lf {

// One seed derivation for every random choice: deterministic, streams and indices independent
// (no two (stream, index) pairs of a seed collide over a grid, low bits are balanced).
// The resume journal: records of a run with the same header come back (a torn last line is
// dropped), another run's journal is set aside rather than mixed in, appends from several threads
// all land as whole lines, and finish() removes the file.
TEST(JsonlJournal, ResumesSameRunDropsTornTailAndSetsAsideOtherRuns) {
  const std::string dir = test::tmp_dir("journal"), path = dir + "/out.partial.jsonl";
  const nlohmann::json head = {{"command", "caption"}, {"options", {{"limit", 5}}}};
  std::vector<nlohmann::json> done;
  {
    auto j = JsonlJournal::open(path, head, &done);
    ASSERT_TRUE(j.ok()) << j.status().message();
    EXPECT_TRUE(done.empty());
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
      ts.emplace_back([&, t] {
        for (int i = 0; i < 25; ++i)
          (*j)->append({{"id", t * 100 + i}, {"pad", std::string(300, 'x')}});
      });
    for (auto& t : ts) t.join();
    EXPECT_TRUE((*j)->status().ok());
  }  // destroyed without finish(): as after a kill
  {
    std::ofstream(path, std::ios::app) << "{\"id\": 9999, \"pad\": \"xx";  // a torn append
  }
  auto again = JsonlJournal::open(path, head, &done);
  ASSERT_TRUE(again.ok()) << again.status().message();
  ASSERT_EQ(done.size(), 100u);
  std::set<int> ids;
  for (auto& r : done) ids.insert(r["id"].get<int>());
  EXPECT_EQ(ids.size(), 100u);
  EXPECT_FALSE(ids.count(9999));
  ASSERT_TRUE((*again)->append({{"id", 5000}}).ok());
  again->reset();
  auto third = JsonlJournal::open(path, head, &done);
  ASSERT_TRUE(third.ok());
  EXPECT_EQ(done.size(), 101u);  // the appends after a resume start on a fresh line
  ASSERT_TRUE((*third)->finish().ok());
  EXPECT_FALSE(std::filesystem::exists(path));
  // Other options: not resumed from, kept aside.
  { ASSERT_TRUE((*JsonlJournal::open(path, head, &done))->append({{"id", 1}}).ok()); }
  auto other =
      JsonlJournal::open(path, {{"command", "caption"}, {"options", {{"limit", 6}}}}, &done);
  ASSERT_TRUE(other.ok());
  EXPECT_TRUE(done.empty());
  EXPECT_TRUE(std::filesystem::exists(path + ".old"));
  // A bad line that is not the last one is damage, not a torn append.
  ASSERT_TRUE(write_file_atomic(dir + "/bad.jsonl", "{\"a\":1}\nnot json\n{\"a\":2}\n").ok());
  auto bad = read_jsonl_tolerant(dir + "/bad.jsonl");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("bad.jsonl:2"), std::string::npos);
}

TEST(Rng, DeriveSeedSeparatesStreamsAndIndices) {
  static_assert(derive_seed(7, Stream::kPhantom, 3) == derive_seed(7, Stream::kPhantom, 3));
  std::set<uint64_t> seen;
  int64_t ones = 0, n = 0;
  for (uint64_t seed : {0ULL, 1ULL, 2ULL})
    for (uint64_t s = 1; s <= 18; ++s)
      for (uint64_t i = 0; i < 200; ++i) {
        uint64_t v = derive_seed(seed, static_cast<Stream>(s), i);
        EXPECT_TRUE(seen.insert(v).second) << seed << " " << s << " " << i;
        ones += __builtin_popcountll(v & 0xFFFF);
        n += 16;
      }
  EXPECT_NEAR(static_cast<double>(ones) / n, 0.5, 0.01);
  // The old pattern seed * K + step made seed 1 / step 0 equal seed 0 / step K; not any more.
  EXPECT_NE(derive_seed(1, Stream::kGenNoise, 0), derive_seed(0, Stream::kGenNoise, 1000003));
}

}  // namespace lf

TEST(Scratch, TempDirIsRemovedWithItsContentAndPartialDirAppearsOnlyWhenCommitted) {
  namespace fs = std::filesystem;
  std::string kept;
  {
    auto td = lf::TempDir::create("scratch_test");
    ASSERT_TRUE(td.ok()) << td.status().message();
    kept = td->path();
    ASSERT_TRUE(fs::is_directory(kept));
    ASSERT_TRUE(lf::make_dirs(kept + "/a/b").ok());
    ASSERT_TRUE(lf::write_file_atomic(kept + "/a/b/x.txt", "x").ok());
    lf::TempDir moved = std::move(*td);  // the moved-from handle removes nothing
    EXPECT_TRUE(fs::exists(kept + "/a/b/x.txt"));
  }
  EXPECT_FALSE(fs::exists(kept));

  const std::string base = lf::test::tmp_dir("scratch_partial"), out = base + "/set";
  ASSERT_TRUE(lf::make_dirs(out + ".partial/stale").ok());  // left by a killed attempt
  auto part = lf::PartialDir::begin(out, "test export");
  ASSERT_TRUE(part.ok()) << part.status().message();
  EXPECT_EQ(part->path(), out + ".partial");
  EXPECT_FALSE(fs::exists(out + ".partial/stale"));
  ASSERT_TRUE(lf::write_file_atomic(part->path() + "/f.txt", "done").ok());
  EXPECT_FALSE(fs::exists(out));  // not visible before commit
  ASSERT_TRUE(part->commit().ok());
  EXPECT_TRUE(fs::exists(out + "/f.txt"));
  EXPECT_FALSE(fs::exists(out + ".partial"));
  auto again = lf::PartialDir::begin(out, "test export");
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.status().message().find("already exists (test export writes a new folder)"),
            std::string::npos);
}
