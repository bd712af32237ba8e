// Long tables sort by a column (click its header; again to reverse) and filter by a text (the
// rows that contain it). Numbers sort as numbers ("97.3 ± 0.4" by 97.3; "–" last). No network.
(function () {
  "use strict";
  var LONG = 12;
  function key(cell) {
    var text = cell.textContent.trim(), number = parseFloat(text.replace(/^[<>≤≥]/, "").replace(/,/g, ""));
    return isNaN(number) ? [1, text.toLowerCase()] : [0, number];
  }
  function compare(a, b) {
    if (a[0] !== b[0]) { return a[0] - b[0]; }
    return a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0;
  }
  function sortable(table) {
    var body = table.tBodies[0], headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (header, column) {
      header.classList.add("sortable");
      header.addEventListener("click", function (event) {
        if (event.target.tagName === "A") { return; }  // a header's glossary link
        var descending = header.getAttribute("aria-sort") === "ascending";
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute("aria-sort"); });
        header.setAttribute("aria-sort", descending ? "descending" : "ascending");
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var order = compare(key(a.cells[column]), key(b.cells[column]));
          return descending ? -order : order;
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
  }
  function filterable(table) {
    var input = document.createElement("input");
    input.type = "search";
    input.className = "filter";
    input.placeholder = "filter rows (e.g. a method, a rate)";
    input.setAttribute("aria-label", "filter the rows of the table below");
    input.addEventListener("input", function () {
      var wanted = input.value.trim().toLowerCase();
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        row.hidden = wanted !== "" && row.textContent.toLowerCase().indexOf(wanted) === -1;
      });
    });
    table.parentNode.parentNode.insertBefore(input, table.parentNode);
  }
  Array.prototype.forEach.call(document.querySelectorAll("div.scroll > table"), function (table) {
    if (table.tBodies[0].rows.length > LONG) {
      sortable(table);
      filterable(table);
    }
  });
}());
