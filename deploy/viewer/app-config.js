window.config = {
  "routerBasename": "/",
  "extensions": [],
  "modes": [],
  "showStudyList": true,
  "maxNumberOfWebWorkers": 1,
  "showWarningMessageForCrossOrigin": false,
  "showCPUFallbackMessage": false,
  "showLoadingIndicator": true,
  "investigationalUseDialog": {
    "option": "never"
  },
  "defaultDataSourceName": "orthanc",
  "dataSources": [
    {
      "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
      "sourceName": "orthanc",
      "configuration": {
        "friendlyName": "Orthanc",
        "name": "orthanc",
        "wadoUriRoot": "/dicom-web",
        "qidoRoot": "/dicom-web",
        "wadoRoot": "/dicom-web",
        "qidoSupportsIncludeField": false,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": true,
        "supportsFuzzyMatching": false,
        "supportsWildcard": true,
        "omitQuotationForMultipartRequest": true,
        "bulkDataURI": {
          "enabled": true,
          "relativeResolution": "studies"
        }
      }
    }
  ]
};

