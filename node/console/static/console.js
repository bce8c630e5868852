// Jobmesh console: hand-written, no dependencies. Each page names its live stream in
// <body data-stream="...">; the server pushes changes (server-sent events), nothing polls.
"use strict";

(function () {
  const body = document.body;

  // Selects marked data-autosubmit send their form at once (the offloading matrix).
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }

  const streamUrl = body.dataset.stream;
  if (!streamUrl || typeof EventSource === "undefined") {
    return;
  }
  const source = new EventSource(streamUrl);
  window.addEventListener("pagehide", () => source.close());
  const path = window.location.pathname;

  function formatTime(us) {
    if (!us) {
      return "unknown";
    }
    return new Date(us / 1000).toISOString().replace("T", " ").slice(0, 19);
  }

  function onJobPage(data) {
    for (const job of data.jobs) {
      const bar = document.getElementById("progress");
      if (job.total !== undefined && bar) {
        bar.max = Math.max(job.total, 1);
        bar.value = job.done;
        document.getElementById("progress-text").textContent = job.done + " / " + job.total;
        document.getElementById("eta").textContent = formatTime(job.eta_us);
      }
      const logCount = document.getElementById("log-count");
      if (logCount && job.log_count !== undefined) {
        logCount.textContent = String(job.log_count); // all lines logged; the list shows the newest kept
      }
      const log = document.getElementById("log");
      if (log && Array.isArray(job.log) && job.log.length !== log.children.length) {
        log.replaceChildren(
          ...job.log.map(([time, text]) => {
            const item = document.createElement("li");
            const stamp = document.createElement("time");
            stamp.textContent = time;
            item.append(stamp, " " + text);
            return item;
          }),
        );
      }
      const state = document.getElementById("state");
      if (state && job.state && state.textContent !== job.state) {
        state.textContent = job.state;
        state.dataset.state = job.state;
        const events = document.getElementById("events"); // only on the newest page of events
        if (events) {
          const item = document.createElement("li");
          item.textContent = new Date().toISOString().slice(11, 19) + " " + job.state + (job.message ? ": " + job.message : "");
          events.prepend(item);
        }
        if (!["QUEUED", "ACTIVE"].includes(job.state)) {
          // Finished: the page shows the result, the log and the output.
          window.setTimeout(() => window.location.reload(), 300);
        }
      }
    }
  }

  function onJobsList(data) {
    for (const job of data.jobs) {
      const row = document.querySelector('tr[data-job="' + CSS.escape(job.id) + '"]');
      if (!row) {
        continue;
      }
      const state = row.querySelector(".state");
      if (state && job.state) {
        state.textContent = job.state;
        state.dataset.state = job.state;
      }
      const bar = row.querySelector("progress");
      if (bar && job.total !== undefined) {
        bar.max = Math.max(job.total, 1);
        bar.value = job.done;
      }
    }
    if (data.added) {
      const banner = document.getElementById("new-jobs");
      if (banner) {
        const count = (Number(banner.dataset.count) || 0) + data.added;
        banner.dataset.count = String(count);
        banner.querySelector("a").textContent = count + " new job(s): show them";
        banner.querySelector("a").href = window.location.pathname + window.location.search;
        banner.hidden = false;
      }
    }
  }

  function onOverview(data) {
    const svg = document.getElementById("rates");
    if (!svg) {
      return;
    }
    const rates = data.rates;
    const now = Date.now() / 1000;
    let peak = 1;
    for (const r of rates) {
      peak = Math.max(peak, r[1], r[2], r[3]);
    }
    ["added", "succeeded", "failed"].forEach((name, index) => {
      const points = rates.map((r) => {
        const x = 600 - ((now - r[0]) / 3600) * 600;
        const y = 150 - (r[index + 1] / peak) * 135;
        return Math.max(0, x).toFixed(1) + "," + y.toFixed(1);
      });
      svg.querySelector("polyline." + name).setAttribute("points", points.join(" "));
    });
    document.getElementById("peak").textContent = "peak " + peak.toFixed(1) + "/s";
    document.getElementById("totals").textContent =
      "(totals: " + data.added + " added, " + data.succeeded + " succeeded, " + data.failed + " failed)";
  }

  let reloading = false;
  source.onmessage = (message) => {
    const data = JSON.parse(message.data);
    if (streamUrl.startsWith("/streams/topology")) {
      if (!reloading) {
        reloading = true;
        window.setTimeout(() => window.location.reload(), 500);
      }
    } else if (streamUrl.startsWith("/streams/overview")) {
      onOverview(data);
    } else if (path.startsWith("/jobs/")) {
      onJobPage(data);
    } else {
      onJobsList(data);
    }
  };
})();
