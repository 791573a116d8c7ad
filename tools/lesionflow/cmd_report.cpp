// lesionflow report: flags -> ReportOptions -> write_html_report (src/report/html_report.cpp).
#include <filesystem>

#include "cli.h"
#include "lesionflow/report.h"

namespace lf::cli {

void add_report(CLI::App& app, GlobalOptions& g, Runner* run) {
  static ReportOptions o;
  auto* r = app.add_subcommand("report", "self-contained HTML report of a run");
  r->add_option("--train-run", o.train_run, "generator run directory");
  r->add_option("--samples", o.samples, "sample directories (repeatable)");
  r->add_option("--captions", o.captions, "captions.jsonl");
  r->add_option("--real", o.real, "prepared cache of real images to show");
  r->add_option("--data-summary", o.data_summary, "JSON from 'data inspect --json'");
  r->add_option("--experiment", o.experiment,
                "experiment directory (classifier results, synthetic set, audit)");
  r->add_option("--title", o.title, "page title")->capture_default_str();
  r->add_option("--out", o.out, "HTML file")->capture_default_str();
  r->callback([&g, run]() {
    *run = [&g]() -> Status {
      o.command_line = g.command_line;
      LF_RETURN_IF_ERROR(write_html_report(o));
      std::printf("report: %s\n", std::filesystem::absolute(o.out).string().c_str());
      return Status::ok_status();
    };
  });
}

}  // namespace lf::cli
