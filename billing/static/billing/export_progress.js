// Follows a CDR export job on its admin page: polls the job's API resource (the admin's
// session authenticates it), moves the bar, and shows the download link when the file is ready.
"use strict";
(function () {
  const root = document.querySelector(".export-progress");
  if (!root) return;
  const url = root.dataset.statusUrl;
  const bar = document.getElementById("export-bar");
  const percent = document.getElementById("export-percent");
  const status = document.getElementById("export-status");
  const rows = document.getElementById("export-rows");
  const error = document.getElementById("export-error");
  const download = document.getElementById("export-download");
  const FINAL = new Set(["done", "failed", "expired"]);

  async function poll() {
    let job;
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      job = await response.json();
    } catch (e) {
      setTimeout(poll, 2000);  // a blip: try again
      return;
    }
    const value = Math.round(job.progress * 100);
    bar.value = value;
    bar.textContent = percent.textContent = value + " %";
    status.textContent = job.status;
    rows.textContent = job.rows_written;
    if (job.error) { error.textContent = job.error; error.hidden = false; }
    if (job.status === "done") { download.querySelector("a").href = job.download_url; download.hidden = false; }
    if (!FINAL.has(job.status)) setTimeout(poll, 500);
  }
  if (!FINAL.has(status.textContent.trim())) poll();
})();
