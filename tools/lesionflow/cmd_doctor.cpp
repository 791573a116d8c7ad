// lesionflow doctor: libtorch version, BLAS, threads, a measured matmul figure, data paths.
#include <filesystem>

#include "cli.h"
#include "lesionflow/log.h"
#include "lesionflow/runtime.h"

namespace lf::cli {

void add_doctor(CLI::App& app, GlobalOptions& g, Runner* run) {
  auto* sub =
      app.add_subcommand("doctor", "check the machine: libtorch, BLAS, threads, GFLOP/s, data");
  static std::string data_root = "../shared/data";
  sub->add_option("--data-root", data_root, "where to look for datasets")->capture_default_str();
  sub->callback([&g, run]() {
    *run = [&g]() -> Status {
      nlohmann::json j;
      j["lesionflow"] = LESIONFLOW_VERSION;
      j["libtorch"] = torch_version();
      j["blas_alternative"] = active_blas_alternative();
      j["blas_loaded"] = loaded_blas();
      j["blas_is_openblas"] = blas_is_openblas();
      j["allocator"] = loaded_allocator();
      j["threads"] = get_threads();
      j["hardware_threads"] = hardware_threads();
      j["device"] = g.device;
      double gf = measure_sgemm_gflops(1024, 1.0);
      j["sgemm_1024_gflops"] = gf;
      const bool bf16 = cpu_has_bf16();
      const double bf = measure_bf16_gemm_gflops(1024, 1.0);
      j["cpu_bf16"] = bf16;
      j["bf16_gemm_1024_gflops"] = bf;
      j["precision_auto"] = bf16 ? "bf16" : "fp32";
      nlohmann::json data = nlohmann::json::object();
      for (std::string root :
           {data_root, std::string("../../shared/data"), std::string("shared/data")}) {
        std::string ham = root + "/ham10000/HAM10000_metadata.csv";
        if (std::filesystem::exists(ham)) {
          data["ham10000"] = std::filesystem::canonical(root + "/ham10000").string();
          break;
        }
      }
      j["data"] = data;
      std::vector<std::string> warnings;
      if (!blas_is_openblas())
        warnings.push_back("the active libblas.so.3 is not OpenBLAS (" + active_blas_alternative() +
                           "): matmuls are ~100x slower; run scripts/setup.sh");
      if (get_threads() < hardware_threads())
        warnings.push_back("only " + std::to_string(get_threads()) + " of " +
                           std::to_string(hardware_threads()) + " cores used (--threads)");
      if (gf < 50) warnings.push_back("sgemm is slow (" + std::to_string(gf) + " GFLOP/s)");
      j["warnings"] = warnings;
      if (g.json) {
        emit_json(g, j);
      } else {
        std::printf(
            "lesionflow %s\nlibtorch    %s\nBLAS        %s (%s)\nloaded      %s\n"
            "threads     %d of %d\ndevice      %s\nsgemm 1024  %.1f GFLOP/s\n",
            LESIONFLOW_VERSION, torch_version().c_str(), active_blas_alternative().c_str(),
            blas_is_openblas() ? "OpenBLAS" : "NOT OpenBLAS", loaded_blas().c_str(), get_threads(),
            hardware_threads(), g.device.c_str(), gf);
        std::printf(
            "bf16        %s; bf16 GEMM 1024 %.1f GFLOP/s (%.2fx fp32); --precision auto = %s\n",
            bf16 ? "AVX512_BF16/AMX present" : "no AVX512_BF16/AMX (bf16 would be emulated)", bf,
            bf / gf, bf16 ? "bf16" : "fp32");
        std::printf("allocator   %s\n", loaded_allocator().c_str());
        std::printf("HAM10000    %s\n", data.contains("ham10000")
                                            ? data["ham10000"].get<std::string>().c_str()
                                            : "not found");
        for (const auto& w : warnings) log_warn(w);
      }
      return Status::ok_status();
    };
  });
}

}  // namespace lf::cli
