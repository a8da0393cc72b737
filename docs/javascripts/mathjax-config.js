// MathJax 3 configuration, read by MathJax when it loads: mkdocs.yml lists this script in
// extra_javascript before javascripts/mathjax/tex-svg-full.js, which docs/hooks/mathjax.py
// copies into the site from the installed django-static-mathjax package (no CDN).
//
// pymdownx.arithmatex (generic mode) wraps each formula of a page in an element of class
// "arithmatex" holding \( ... \) (inline) or \[ ... \] (display); only those elements are
// typeset, so code, tables and notebook outputs are never scanned for TeX.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};

// With mkdocs-material's instant navigation a page's content is swapped in without a reload:
// typeset each new document once MathJax has started (the first page is typeset by MathJax's
// own start-up).
if (window.document$) {
  window.document$.subscribe(function () {
    var mathjax = window.MathJax;
    if (!mathjax || !mathjax.startup || !mathjax.startup.promise) {
      return;
    }
    mathjax.startup.promise = mathjax.startup.promise.then(function () {
      var output = mathjax.startup.output;
      if (output && typeof output.clearCache === "function") {
        output.clearCache(); // the CHTML output's font cache; the SVG output has none
      }
      mathjax.typesetClear();
      mathjax.texReset();
      return mathjax.typesetPromise();
    });
  });
}
