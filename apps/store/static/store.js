// Home page: pick a photo (file picker, drag and drop, paste), preview it, and let the shopper
// drag a box around the garment. The box is sent in the photo's own pixel coordinates.
(function () {
  "use strict";
  var input = document.getElementById("image-input");
  var zone = document.getElementById("drop-zone");
  var wrap = document.getElementById("preview-wrap");
  var preview = document.getElementById("preview");
  var boxEl = document.getElementById("box");
  var bboxField = document.getElementById("bbox");
  var boxHint = document.getElementById("box-hint");
  var clearBox = document.getElementById("clear-box");
  var dropError = document.getElementById("drop-error");
  if (!input || !zone) { return; }
  var objectUrl = null;
  var start = null;

  // The file input is visually hidden, so the browser's own "required" bubble would point
  // at nothing: say it in the drop zone instead.
  function showMissing(missing) {
    zone.classList.toggle("invalid", missing);
    if (dropError) { dropError.hidden = !missing; }
  }

  function useFile(file) {
    if (!file || !/^image\//.test(file.type)) { return; }
    showMissing(false);
    if (objectUrl) { URL.revokeObjectURL(objectUrl); }
    objectUrl = URL.createObjectURL(file);
    preview.src = objectUrl;
    wrap.hidden = false;
    boxHint.hidden = false;
    setBox(null);
  }

  function setFiles(files) {
    if (!files || !files.length) { return; }
    // Put the dropped or pasted file into the form's own input so a plain submit sends it.
    var transfer = new DataTransfer();
    transfer.items.add(files[0]);
    input.files = transfer.files;
    useFile(files[0]);
  }

  function setBox(rect) {
    if (!rect || rect.w < 4 || rect.h < 4) {
      boxEl.hidden = true;
      bboxField.value = "";
      return;
    }
    boxEl.hidden = false;
    boxEl.style.left = rect.x + "px";
    boxEl.style.top = rect.y + "px";
    boxEl.style.width = rect.w + "px";
    boxEl.style.height = rect.h + "px";
    var sx = preview.naturalWidth / preview.clientWidth;
    var sy = preview.naturalHeight / preview.clientHeight;
    bboxField.value = [
      Math.round(rect.x * sx), Math.round(rect.y * sy),
      Math.max(1, Math.round(rect.w * sx)), Math.max(1, Math.round(rect.h * sy))
    ].join(",");
  }

  function point(event) {
    var r = preview.getBoundingClientRect();
    return {
      x: Math.min(Math.max(event.clientX - r.left, 0), r.width),
      y: Math.min(Math.max(event.clientY - r.top, 0), r.height)
    };
  }

  function rectFrom(a, b) {
    return { x: Math.min(a.x, b.x), y: Math.min(a.y, b.y), w: Math.abs(a.x - b.x), h: Math.abs(a.y - b.y) };
  }

  input.addEventListener("change", function () { useFile(input.files[0]); });
  input.addEventListener("invalid", function (e) {
    e.preventDefault();
    showMissing(true);
    zone.scrollIntoView({ block: "nearest" });
    input.focus();
  });
  zone.addEventListener("dragover", function (e) { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
  zone.addEventListener("drop", function (e) {
    e.preventDefault();
    zone.classList.remove("over");
    setFiles(e.dataTransfer.files);
  });
  document.addEventListener("paste", function (e) {
    var items = (e.clipboardData && e.clipboardData.files) || [];
    if (items.length) { e.preventDefault(); setFiles(items); }
  });

  wrap.addEventListener("pointerdown", function (e) {
    e.preventDefault();
    wrap.setPointerCapture(e.pointerId);
    start = point(e);
  });
  wrap.addEventListener("pointermove", function (e) {
    if (start) { setBox(rectFrom(start, point(e))); }
  });
  wrap.addEventListener("pointerup", function (e) {
    if (start) { setBox(rectFrom(start, point(e))); start = null; }
  });
  wrap.addEventListener("pointercancel", function () { start = null; });
  clearBox.addEventListener("click", function () { setBox(null); });
})();
