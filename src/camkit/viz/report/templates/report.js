(function () {
  var toggle = document.getElementById("view-toggle");
  if (toggle) {
    toggle.addEventListener("click", function () {
      var raw = document.body.classList.toggle("show-raw");
      toggle.setAttribute("aria-pressed", raw ? "true" : "false");
      toggle.textContent = raw ? "Show overlays" : "Show raw maps";
    });
  }
  document.querySelectorAll("input[data-var]").forEach(function (input) {
    input.addEventListener("input", function () {
      document.documentElement.style.setProperty(
        input.dataset.var, input.value + (input.dataset.unit || ""));
    });
  });
})();
